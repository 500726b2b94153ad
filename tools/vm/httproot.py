"""Ironic's http_root, served to the guest and, under the guest's name, to Ironic itself.

Ironic names everything it publishes by ``[deploy]http_url``, and the
conductor HEAD-checks one of those URLs itself (the cached instance image
under ``agent_images/``, before it tells the agent to fetch it).  Upstream
assumes the conductor and the node reach that URL alike; here the guest
reaches http_root as 10.0.2.100:80 (QEMU guestfwd) and the host only as
127.0.0.1:<port>.  So this one server is both: the guestfwd target, and the
HTTP proxy in Ironic's environment (``http_proxy``, with 127.0.0.1 in
``no_proxy``), answering absolute-form requests for 10.0.2.100 only, as
any origin server must accept them (RFC 9112 3.2.2).  Ironic itself is not
modified; nothing on the host listens beyond 127.0.0.1.
"""

from __future__ import annotations

import functools
import urllib.parse
from typing import Any

from vm import services


class _Handler(services._Handler):
    guest_host = ""

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.path.startswith(("http://", "https://")):
            target = urllib.parse.urlsplit(self.path)
            if target.scheme != "http" or target.hostname != self.guest_host or (
                    target.port not in (None, 80)):
                # a proxy for one address only: anything else is not ours to fetch
                self.send_error(502, f"only http://{self.guest_host}/ is served here")
                return False
            self.path = target.path + (f"?{target.query}" if target.query else "")
        return True


class HttpRoot(services.FileServer):
    """A services.FileServer that also answers ``GET http://<guest_host>/path`` requests."""

    def __init__(self, directory: str, log_path: str, guest_host: str) -> None:
        super().__init__(directory, log_path)
        handler: Any = type("HttpRootHandler", (_Handler,), {"guest_host": guest_host})
        self._server.RequestHandlerClass = functools.partial(handler, directory=directory)

    def proxy_env(self) -> dict[str, str]:
        """Ironic's environment: guest URLs through this server, everything on 127.0.0.1 direct."""
        proxy = f"http://127.0.0.1:{self.port}"
        direct = "127.0.0.1,localhost"
        return {"http_proxy": proxy, "HTTP_PROXY": proxy, "no_proxy": direct, "NO_PROXY": direct}
