"""URL building from an mDNS record, TXT overrides, and zeroconf staying unimported.

The wire side (a real responder in a network namespace) is in
tests/functional/test_mdns.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent import config
from agent.ironic.mdns import MdnsLookupFailed, Record, apply_overrides, build_url, wanted


def route_to(*reachable: str):
    return lambda address, port: address in reachable


def record(port: int | None = 6385, server: str = "baremetal._openstack._tcp.local.",
           addresses: tuple[str, ...] = ("192.0.2.10",), **props: str) -> Record:
    return Record(server=server, port=port, addresses=list(addresses), properties=props)


def cfg(cmdline: str = "", **env: str) -> config.Config:
    return config.load(cmdline=cmdline, read_proc=False,
                       env={f"DEPLOY_AGENT_{k.upper()}": v for k, v in env.items()})


@pytest.mark.parametrize(("rec", "url"), [
    (record(protocol="http", path="/baremetal"), "http://192.0.2.10:6385/baremetal"),
    (record(protocol="HTTPS"), "https://192.0.2.10:6385"),
    (record(port=80), "http://192.0.2.10:80"),              # IPA: http only on port 80
    (record(port=443), "https://192.0.2.10:443"),
    (record(), "https://192.0.2.10:6385"),
    (record(path="/v/"), "https://192.0.2.10:6385/v"),      # no doubled slash before /v1
    (record(addresses=("2001:db8::5",), protocol="http"), "http://[2001:db8::5]:6385"),
    (record(server="ironic.example.com.", protocol="https"), "https://ironic.example.com:6385"),
    (record(server=""), "https://192.0.2.10:6385"),
])
def test_url_from_properties(rec, url):
    assert build_url(rec, route=route_to("192.0.2.10", "2001:db8::5")) == url


def test_routable_address_preferred_then_first_usable():
    rec = record(addresses=("127.0.0.1", "fe80::1", "198.51.100.1", "192.0.2.10"))
    assert build_url(rec, route=route_to("192.0.2.10")) == "https://192.0.2.10:6385"
    assert build_url(rec, route=route_to()) == "https://198.51.100.1:6385"


@pytest.mark.parametrize(("rec", "message"), [
    (record(port=0), "no valid port"),
    (record(port=None), "no valid port"),
    (record(protocol="gopher"), "neither http nor https"),
    (record(path="relative"), "plain URL path"),
    (record(path="/a b"), "plain URL path"),
    (record(path="/a#frag"), "plain URL path"),
    (record(server="bad_host!.example."), "not a valid host name"),
    (record(addresses=("127.0.0.1", "fe80::1")), "no usable address"),
    (record(addresses=()), "no usable address"),
])
def test_junk_is_refused_without_echoing_it(rec, message):
    with pytest.raises(MdnsLookupFailed, match=message) as err:
        build_url(rec, route=route_to("192.0.2.10"))
    for junk in ("gopher", "relative", "bad_host"):
        assert junk not in err.value.details


def test_overrides_only_allowed_unset_and_valid():
    c = cfg("ipa-ntp-server=10.0.0.1")
    applied = apply_overrides(c, {
        "ipa_ntp_server": "192.0.2.1",                      # the operator's value stays
        "ipa_inspection_callback_url": "http://192.0.2.1:5050/v1/continue",
        "ipa_debug": "1",                                   # not allowed by default
        "ipa_api_url": "http://evil",                       # never from a record
        "ipa_mdns_allowed_overrides": "debug",              # nor the list itself
        "ipa_nonsense": "x", "other": "y"})
    assert applied == ["inspection_callback_url"]
    assert c.inspection_callback_url == "http://192.0.2.1:5050/v1/continue"
    assert c.sources["inspection_callback_url"] == "mdns"
    assert c.ntp_server == "10.0.0.1" and c.debug is False and c.api_url == []


def test_allowed_list_is_configurable_and_values_are_parsed():
    c = cfg(mdns_allowed_overrides="debug,lookup_timeout,inspection_callback_url")
    assert apply_overrides(c, {"ipa_debug": "true", "ipa_lookup_timeout": "soon",
                               "ipa_inspection_callback_url": "ftp://x"}) == ["debug"]
    assert c.debug is True and c.lookup_timeout == 600.0 and c.inspection_callback_url is None


@pytest.mark.parametrize(("cmdline", "expected"), [
    ("", False),
    ("ipa-use-mdns=1", True),
    ("ipa-use-mdns=1 ipa-api-url=http://x", False),
    ("ipa-api-url=mdns", True),
    ("ipa-api-url=mdns ipa-standalone=1", False),
    ("ipa-inspection-callback-url=mdns", True),
])
def test_wanted(cmdline, expected):
    c = cfg(cmdline, standalone="1" if "standalone" in cmdline else "0")
    assert wanted(c) is expected


def test_zeroconf_is_not_imported_unless_mdns_is_asked_for():
    code = ("import sys\n"
            "from agent import cli, config\n"
            "from agent.ironic import mdns, session\n"
            "mdns.resolve_at_start(config.load(cmdline='ipa-api-url=http://x', env={},"
            " read_proc=False))\n"
            "assert 'zeroconf' not in sys.modules, 'zeroconf imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
