"""deploy-agent: a bare-metal deploy ramdisk agent speaking Ironic's agent API v1."""

__version__ = "0.1.0"
