"""An operator or a test talking to an agent, the way Ironic's conductor does.

- ``client``: the HTTP client for the agent's v1 API
- ``conductor``: a conductor-like driver (deploy plan, step calls, polling, power off)
- ``request``: ``image_info`` and config drive from the few values an operator types
- ``cli``: the ``deploy-agent deploy`` subcommand
- ``standin``: a stand-in for Ironic's ramdisk endpoints (lookup, heartbeat, tokens), for
  local runs and tests; it is not Ironic and keeps node state in memory only
- ``standin_cli``: ``deploy-agent standin``, the stand-in in the foreground
"""
