"""mDNS discovery of the controller between two network namespaces.

A responder (python-zeroconf's ServiceInfo registration, or Ironic's own
publisher from .venv-ironic) runs in one namespace; the agent side runs in
another, joined to it by a veth pair, so the host's network is untouched.
Both namespaces go away on every path.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
IRONIC_PYTHON = Path(os.environ.get("IRONIC_VENV", REPO / ".venv-ironic")) / "bin" / "python"
SERVER_V4, AGENT_V4 = "10.77.0.1", "10.77.0.2"
SERVER_V6, AGENT_V6 = "fd77::1", "fd77::2"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2 for netns and veth")

# registers one record and answers for it until stdin closes
RESPONDER = """
import ipaddress, json, sys, zeroconf
spec = json.loads(sys.argv[1])
info = zeroconf.ServiceInfo(
    "_openstack._tcp.local.", spec["service"] + "._openstack._tcp.local.",
    addresses=[ipaddress.ip_address(a).packed for a in spec["addresses"]],
    port=spec["port"], properties=spec["properties"], server=spec.get("server"))
zc = zeroconf.Zeroconf(interfaces=spec["interfaces"])
zc.register_service(info)
print("ready", flush=True)
sys.stdin.read()
zc.close()
"""

# the conductor's own code path: [conductor] enable_mdns publishes like this
IRONIC_RESPONDER = """
import sys
from ironic.conf import CONF
CONF([], project="ironic", default_config_files=[])
CONF.set_override("interfaces", sys.argv[2].split(","), group="mdns")
from ironic.common import mdns
zc = mdns.Zeroconf()
zc.register_service("baremetal", sys.argv[1], params={"ipa_debug": True})
print("ready", flush=True)
sys.stdin.read()
zc.close()
"""

# the agent side: the start-up resolution, then what the config holds
PROBE = """
import json, logging, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from agent import config
from agent.errors import AgentError
from agent.ironic import mdns
cfg = config.load(cmdline=sys.argv[1], env=json.loads(sys.argv[2]), read_proc=False)
out = {}
started = time.monotonic()
try:
    mdns.resolve_at_start(cfg)
except AgentError as exc:
    out.update(error=type(exc).__name__, details=exc.details)
out.update(seconds=time.monotonic() - started, api_url=cfg.api_url,
           inspection_callback_url=cfg.inspection_callback_url,
           ntp_server=cfg.ntp_server, debug=cfg.debug)
print(json.dumps(out))
"""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


class Lab:
    """Two namespaces, ``agent`` and ``server``, on one veth link (IPv4 and IPv6)."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.agent, self.server = f"mdA-{tag}", f"mdR-{tag}"
        self.link = f"md{tag}"
        self.responders: list[subprocess.Popen] = []

    def up(self) -> None:
        for ns in (self.agent, self.server):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("link", "add", self.link + "a", "netns", self.agent, "type", "veth", "peer",
           "name", self.link + "r", "netns", self.server)
        for ns, dev, v4, v6 in ((self.agent, self.link + "a", AGENT_V4, AGENT_V6),
                                (self.server, self.link + "r", SERVER_V4, SERVER_V6)):
            # no duplicate address detection: a responder started while its
            # link-local address is still tentative cannot bind its IPv6 socket
            # and never answers over IPv6 (a conductor's links are long up)
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                            f"net.ipv6.conf.{dev}.accept_dad=0"], check=True)
            ip("-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
            ip("-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            ip("-n", ns, "link", "set", dev, "up")

    def _start(self, argv: list[str]) -> None:
        proc = subprocess.Popen(["ip", "netns", "exec", self.server, *argv],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=REPO)
        self.responders.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            proc.kill()
            raise AssertionError(f"responder did not start: {line!r} "
                                 f"{proc.stderr.read() if proc.stderr else ''}")

    def respond(self, *, port: int, properties: dict[str, str] | None = None,
                addresses: tuple[str, ...] = (SERVER_V4,), server: str | None = None,
                service: str = "baremetal") -> None:
        spec = {"service": service, "port": port, "properties": properties or {},
                "addresses": list(addresses), "server": server,
                "interfaces": [SERVER_V4, SERVER_V6]}
        self._start([sys.executable, "-c", RESPONDER, json.dumps(spec)])

    def respond_as_ironic(self, endpoint: str) -> None:
        self._start([str(IRONIC_PYTHON), "-c", IRONIC_RESPONDER, endpoint,
                     f"{SERVER_V4},{SERVER_V6}"])

    def resolve(self, cmdline: str, **settings: Any) -> dict[str, Any]:
        env = {f"DEPLOY_AGENT_{k.upper()}": str(v) for k, v in settings.items()}
        out = subprocess.run(["ip", "netns", "exec", self.agent, sys.executable, "-c", PROBE,
                              cmdline, json.dumps(env)],
                             capture_output=True, text=True, cwd=REPO, timeout=120)
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        result["log"] = out.stderr
        print(f"resolved in {result['seconds']:.3f}s: {result.get('api_url')}")
        return result

    def down(self) -> None:
        for proc in self.responders:
            proc.kill()
            proc.wait()
        for ns in (self.agent, self.server):
            ip("netns", "del", ns, check=False)      # takes the veth pair along


@pytest.fixture
def lab() -> Iterator[Lab]:
    bench = Lab()
    try:
        try:
            bench.up()
        except subprocess.CalledProcessError as exc:
            if "netns" in " ".join(exc.cmd) and "add" in exc.cmd:
                pytest.skip(f"cannot create a network namespace: {exc.stderr.strip()}")
            raise
        yield bench
    finally:
        bench.down()
    names = ip("netns", "list").stdout
    assert bench.agent not in names and bench.server not in names
    assert ip("link", "show", bench.link + "a", check=False).returncode != 0


# -- found ------------------------------------------------------------------------------

def test_http_with_port_and_path_and_allowed_overrides(lab):
    lab.respond(port=6385, properties={"protocol": "http", "path": "/baremetal",
                                       "ipa_ntp_server": SERVER_V4, "ipa_debug": "1"})
    result = lab.resolve("ipa-api-url=mdns")
    assert "error" not in result, result
    assert result["api_url"] == [f"http://{SERVER_V4}:6385/baremetal"]
    assert result["ntp_server"] == SERVER_V4            # allowed by default (as IPA)
    assert result["debug"] is False                     # not in mdns_allowed_overrides
    assert "ipa_debug ignored" in result["log"]


@pytest.mark.parametrize(("port", "properties", "expected"), [
    (8443, {"protocol": "https"}, f"https://{SERVER_V4}:8443"),
    (443, {}, f"https://{SERVER_V4}:443"),          # no protocol: https unless port 80
    (80, {"path": "/api/"}, f"http://{SERVER_V4}:80/api"),
])
def test_protocol_from_txt_or_port(lab, port, properties, expected):
    lab.respond(port=port, properties=properties)
    assert lab.resolve("ipa-api-url=mdns")["api_url"] == [expected]


def test_ipv6_only_answer_is_bracketed_and_asked_over_ipv6(lab):
    lab.respond(port=6385, properties={"protocol": "http"}, addresses=(SERVER_V6,))
    # an IPv6 address in mdns_interfaces: the question goes to ff02::fb only
    result = lab.resolve("ipa-api-url=mdns", mdns_interfaces=AGENT_V6)
    assert result["api_url"] == [f"http://[{SERVER_V6}]:6385"]


def test_a_real_host_name_in_srv_is_kept_for_tls(lab):
    lab.respond(port=6385, properties={"protocol": "https"}, server="ironic.example.test.")
    assert lab.resolve("ipa-api-url=mdns")["api_url"] == ["https://ironic.example.test:6385"]


def test_use_mdns_without_a_url_and_the_interface_setting(lab):
    lab.respond(port=6385, properties={"protocol": "http"})
    result = lab.resolve("ipa-use-mdns=1", mdns_interfaces=lab.link + "a")
    assert result["api_url"] == [f"http://{SERVER_V4}:6385"]


def test_inspection_callback_from_its_own_service(lab):
    lab.respond(port=5050, properties={"protocol": "http"}, service="baremetal-introspection")
    result = lab.resolve("ipa-inspection-callback-url=mdns")
    assert result["inspection_callback_url"] == f"http://{SERVER_V4}:5050/v1/continue"
    assert result["api_url"] == []
    # without ipa-use-mdns the API is not looked for
    assert "baremetal._openstack" not in result["log"]


@pytest.mark.skipif(not IRONIC_PYTHON.exists(), reason="no Ironic in .venv-ironic "
                    "(tools/dev-setup --ironic)")
@pytest.mark.parametrize(("endpoint", "expected"), [
    (f"http://{SERVER_V4}:6385", f"http://{SERVER_V4}:6385"),
    (f"https://{SERVER_V4}/baremetal", f"https://{SERVER_V4}:443/baremetal"),
])
def test_ironics_own_publisher(lab, endpoint, expected):
    lab.respond_as_ironic(endpoint)
    result = lab.resolve("ipa-api-url=mdns")
    assert result["api_url"] == [expected]
    assert result["debug"] is False     # Ironic sends ipa_debug; IPA's default list refuses it


# -- not found --------------------------------------------------------------------------

def test_nobody_answers_is_a_clear_error(lab):
    result = lab.resolve("ipa-api-url=mdns", mdns_timeout=2)
    assert result["error"] == "MdnsLookupFailed"
    assert "no usable answer for baremetal._openstack._tcp.local." in result["details"]
    assert "enable_mdns" in result["details"]


def test_nobody_answers_with_other_urls_or_implicitly_only_warns(lab):
    other = f"http://{SERVER_V4}:6385"
    result = lab.resolve(f"ipa-api-url=mdns,{other}", mdns_timeout=2)
    assert "error" not in result and result["api_url"] == [other]
    result = lab.resolve("ipa-use-mdns=true", mdns_timeout=2)
    assert "error" not in result and result["api_url"] == []


@pytest.mark.parametrize(("port", "properties", "message"), [
    (0, {"protocol": "http"}, "no valid port"),
    (6385, {"protocol": "gopher"}, "neither http nor https"),
    (6385, {"protocol": "http", "path": "no-slash?x=1"}, "not a plain URL path"),
])
def test_junk_answers_are_refused(lab, port, properties, message):
    lab.respond(port=port, properties=properties)
    result = lab.resolve("ipa-api-url=mdns")
    assert result["error"] == "MdnsLookupFailed"
    assert message in result["details"]
    assert "gopher" not in result["details"]            # the answer is not echoed


def test_serve_exits_naming_the_problem(lab, tmp_path):
    """The CLI resolves before anything else talks to the controller."""
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("ipa-api-url=mdns\n")
    out = subprocess.run(
        ["ip", "netns", "exec", lab.agent, sys.executable, "-m", "agent.cli", "serve",
         "--cmdline", str(cmdline), "--ramdisk", "false", "--listen", "127.0.0.1"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env={**os.environ, "DEPLOY_AGENT_MDNS_TIMEOUT": "2"})
    assert out.returncode == 1
    assert "startup failed: no usable answer for baremetal" in out.stderr


def test_serve_looks_up_at_the_discovered_url(lab, tmp_path):
    lab.respond(port=6385, properties={"protocol": "http", "path": "/bm"})
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("ipa-api-url=mdns ipa-lookup-timeout=1\n")
    out = subprocess.run(
        ["ip", "netns", "exec", lab.agent, sys.executable, "-m", "agent.cli", "serve",
         "--cmdline", str(cmdline), "--ramdisk", "false", "--listen", "127.0.0.1"],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    # nothing serves Ironic's API there: lookup fails, naming the URL it tried
    assert out.returncode == 1
    assert "startup failed: no node found" in out.stderr, out.stderr
    assert f"http://{SERVER_V4}:6385/bm: ConnectionError" in out.stderr
    assert "url: /bm/v1/lookup?" in out.stderr
