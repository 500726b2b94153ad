#!/bin/sh
# Fetch Debian's ppc64el grub-ieee1275-bin and unpack its powerpc-ieee1275
# modules into $1 (default /var/cache/deploy-agent-tests/grub-ppc), so the PReP
# test can run the real grub-install --target=powerpc-ieee1275 on this amd64
# host.  apt runs with private lists and cache: the host's dpkg architectures
# and package lists are left alone.  Print the module directory on success.
set -eu
dest=${1:-/var/cache/deploy-agent-tests/grub-ppc}
if [ -f "$dest/powerpc-ieee1275/moddep.lst" ]; then
    echo "$dest/powerpc-ieee1275"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
touch "$work/status"
set -- -o APT::Architecture=ppc64el -o APT::Architectures::=ppc64el \
    -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache" \
    -o Dir::State::status="$work/status"
apt-get "$@" -qq update >/dev/null 2>&1 || true   # a stale mirror index is not fatal
(cd "$work" && apt-get "$@" -qq download grub-ieee1275-bin >/dev/null 2>&1)
dpkg-deb -x "$work"/grub-ieee1275-bin_*_ppc64el.deb "$work/x"
mkdir -p "$dest"
rm -rf "$dest/powerpc-ieee1275"
cp -a "$work/x/usr/lib/grub/powerpc-ieee1275" "$dest/"
echo "$dest/powerpc-ieee1275"
