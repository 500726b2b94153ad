# shellcheck shell=bash
# The prune (post-install.d/97) removes apt, so dpkg's finalise hook must not
# run `apt-get clean`; the package cache is a bind mount the packing leaves out.
export DIB_DISABLE_APT_CLEANUP=1
