# shellcheck shell=bash
# Where the agent's virtualenv lives inside the image.
export DIB_DEPLOY_AGENT_VENV=${DIB_DEPLOY_AGENT_VENV:-/opt/deploy-agent}
# systemd-networkd configures every wired NIC; no ifupdown stanzas for eth0/eth1.
export DIB_APT_MINIMAL_CREATE_INTERFACES=${DIB_APT_MINIMAL_CREATE_INTERFACES:-0}
