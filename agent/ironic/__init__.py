"""The agent talking to Ironic: from finding the node to heartbeating.

- ``session``: start-up under a controller (MACs → lookup → token → advertise → API → heartbeats)
- ``lookup``: lookup retries, controller overrides, the token decision
- ``heartbeat``: the heartbeat schedule and its thread
- ``http``: the HTTP client for Ironic's ramdisk endpoints (microversions, headers, URL failover)
"""
