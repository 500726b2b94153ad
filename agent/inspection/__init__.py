"""In-band inspection: the collectors that build what the agent posts to Ironic's callback.

``collectors.py`` finds collectors by name through the
``deploy_agent.inspection_collectors`` entry-point group (a site adds its
own the way it adds a hardware manager) and runs the ones
``ipa-inspection-collectors`` names.  Each collector adds keys to one dict,
the body of ``POST /v1/continue_inspection``; ``agent/ironic/inspect.py``
sends it.
"""
