"""The two iPXE scripts of a network boot in QEMU.

QEMU's built-in DHCP names ``first.ipxe`` as the boot file and its TFTP
server hands it out; that script only chains, over HTTP through the
guestfwd address, to ``boot.ipxe``: the project's own
``boot.ipxe.template`` (issue 9) rendered with the guest-side URLs, so the
VM boots the ramdisk exactly the way an operator's iPXE setup would.
"""

from __future__ import annotations

import os

from vm import cache

TEMPLATE = os.path.join("elements", "deploy-agent", "static", "usr", "share", "deploy-agent",
                        "boot.ipxe.template")
FIRST = "first.ipxe"
SECOND = "boot.ipxe"
# the kernel line of the template ends its fixed parameters with this one
ANCHOR = "BOOTIF=${mac}"


class IpxeError(Exception):
    pass


def first_script(http_url: str) -> str:
    return ("#!ipxe\n"
            "# vm-deploy: from QEMU's TFTP server; everything else comes over HTTP\n"
            f"echo vm-deploy: iPXE is ${{ip}} on ${{mac}}, chaining {http_url}/{SECOND}\n"
            ":again\n"
            f"chain --autofree {http_url}/{SECOND} || goto retry\n"
            ":retry\n"
            "echo vm-deploy: chaining failed, retrying in 3 seconds\n"
            "sleep 3\n"
            "goto again\n")


def template_text(ramdisk_dir: str | None = None) -> str:
    """The template shipped with the ramdisk build, else the one in the elements."""
    for path in ((os.path.join(ramdisk_dir, "boot.ipxe.template") if ramdisk_dir else None),
                 os.path.join(cache.REPO, TEMPLATE)):
        if path and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return f.read()
    raise IpxeError(f"no boot.ipxe.template (looked in the ramdisk directory and {TEMPLATE})")


def render(template: str, http_url: str, api_url: str, extra_args: list[str]) -> str:
    """Fill in the URLs; append ``extra_args`` to the kernel command line."""
    if "@HTTP_URL@" not in template or "@API_URL@" not in template:
        raise IpxeError("boot.ipxe.template lacks the @HTTP_URL@/@API_URL@ placeholders")
    text = template.replace("@HTTP_URL@", http_url.rstrip("/")).replace("@API_URL@", api_url)
    if extra_args:
        if text.count(ANCHOR) != 1:
            raise IpxeError(f"cannot add kernel parameters: boot.ipxe.template has "
                            f"{text.count(ANCHOR)} '{ANCHOR}' (expected one)")
        text = text.replace(ANCHOR, " ".join([ANCHOR, *extra_args]))
    return text


def write(tftp_dir: str, http_dir: str, http_url: str, api_url: str,
          extra_args: list[str], ramdisk_dir: str | None = None) -> None:
    with open(os.path.join(tftp_dir, FIRST), "w", encoding="utf-8") as f:
        f.write(first_script(http_url))
    with open(os.path.join(http_dir, SECOND), "w", encoding="utf-8") as f:
        f.write(render(template_text(ramdisk_dir), http_url, api_url, extra_args))
