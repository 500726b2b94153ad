"""MACs, advertise address, callback URL, and startup decisions of run_with_controller."""

from __future__ import annotations

import socket

import pytest

from agent import config as config_mod
from agent import tls
from agent.driver.standin import StandinController
from agent.errors import AdvertiseAddressNotFound, ConfigError
from agent.ironic.session import (
    _certificate_ip,
    advertise_address,
    callback_url,
    local_macs,
    route_source,
    run_with_controller,
)
from agent.runtime import Runtime
from tests.functional.controller.agent_proc import free_port


def cfg(cmdline="", **flags):
    return config_mod.load(cmdline=cmdline, read_proc=False, env={}, flags=flags)


# -- MACs ---------------------------------------------------------------------------------

def test_physical_nics_win_and_are_sorted():
    nics = [{"mac_address": "52:54:00:00:00:02"}, {"mac_address": "52:54:00:00:00:01"}]
    assert local_macs(wait=True, collect=lambda: nics, fallback=lambda: ["x"],
                      sleep=pytest.fail) == ["52:54:00:00:00:01", "52:54:00:00:00:02"]


def test_ramdisk_waits_for_a_nic_driver_to_appear():
    answers = [[], [], [{"mac_address": "52:54:00:00:00:09"}]]
    sleeps = []
    macs = local_macs(wait=True, collect=lambda: answers.pop(0), fallback=lambda: [],
                      sleep=sleeps.append, delay=5.0)
    assert macs == ["52:54:00:00:00:09"] and sleeps == [5.0, 5.0]


def test_outside_a_ramdisk_virtual_macs_are_used_without_waiting():
    assert local_macs(wait=False, collect=lambda: [], fallback=lambda: ["aa:bb:cc:dd:ee:ff"],
                      sleep=pytest.fail) == ["aa:bb:cc:dd:ee:ff"]


# -- advertise address ----------------------------------------------------------------------

def test_configured_advertise_host_wins():
    c = cfg("ipa-advertise-host=10.1.2.3")
    assert advertise_address(c, ["http://127.0.0.1:6385"], route=pytest.fail) == "10.1.2.3"


def test_route_source_of_the_controller_address():
    assert route_source("127.0.0.1", 6385) == "127.0.0.1"
    c = cfg()
    assert advertise_address(c, ["http://127.0.0.1:6385"]) == "127.0.0.1"


def test_route_lookup_retries_then_succeeds_and_tries_every_url():
    c = cfg("ipa-ip-lookup-attempts=3 ipa-ip-lookup-timeout=7")
    asked, sleeps = [], []
    answers = iter([None, None, None, "192.0.2.9"])

    def route(host, port):
        asked.append((host, port))
        return next(answers)

    ip = advertise_address(c, ["https://a.example:6385", "http://[fd00::1]"], route=route,
                           sleep=sleeps.append)
    assert ip == "192.0.2.9" and sleeps == [7.0]
    assert asked == [("a.example", 6385), ("fd00::1", 80)] * 2


def test_no_address_after_bounded_attempts_is_a_clear_error():
    c = cfg("ipa-ip-lookup-attempts=2 ipa-ip-lookup-timeout=1")
    sleeps = []
    with pytest.raises(AdvertiseAddressNotFound) as err:
        advertise_address(c, ["http://198.51.100.1:6385"], route=lambda h, p: None,
                          sleep=sleeps.append)
    assert sleeps == [1.0]
    assert "198.51.100.1" in err.value.details and "ipa-advertise-host" in err.value.details


def test_network_interface_address_is_used_when_named():
    c = cfg("ipa-network-interface=eth9")
    assert advertise_address(c, [], nic_ip=lambda name: "10.9.9.9" if name == "eth9" else None,
                             route=pytest.fail) == "10.9.9.9"


def test_link_local_route_sources_are_ignored(monkeypatch):
    import socket

    class FakeSocket:
        def __init__(self, *a):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def connect(self, addr):
            pass

        def getsockname(self):
            return ("169.254.10.10", 1)

    monkeypatch.setattr(socket, "socket", FakeSocket)
    assert route_source("127.0.0.1", 1) is None


def test_certificate_ip_of_an_advertised_name_is_resolved(caplog):
    import ipaddress
    assert _certificate_ip("fd00::15") == "fd00::15"
    ip = _certificate_ip("localhost")
    assert ipaddress.ip_address(ip).is_loopback and "is a name" in caplog.text
    with pytest.raises(AdvertiseAddressNotFound, match="does not resolve"):
        _certificate_ip("no-such-host.invalid")


def test_callback_url_brackets_ipv6_and_has_no_trailing_slash():
    assert callback_url("https", "fd00::15", 9999) == "https://[fd00::15]:9999"
    assert callback_url("https", "10.0.0.15", 9999) == "https://10.0.0.15:9999"


# -- run_with_controller in-process ---------------------------------------------------------

@pytest.fixture
def fake():
    controller = StandinController(config={"heartbeat_timeout": 100}).start()
    yield controller
    controller.stop()


def start(fake, tmp_path, cmdline="", **flags):
    port = free_port()
    c = cfg(f"ipa-api-url={fake.url} ipa-advertise-host=127.0.0.1 {cmdline}",
            listen_host="127.0.0.1", listen_port=port, **flags)
    runtime = Runtime(c)
    return runtime, run_with_controller(runtime, sleep=pytest.fail), port


def test_static_certificate_is_served_but_not_pinned(fake, tmp_path):
    cert, key = tls.generate_certificate("127.0.0.1")
    cert_file, key_file = tls.write_pair(cert, key, str(tmp_path))
    node = fake.add_node(macs=None)
    runtime, session, port = start(fake, tmp_path, tls_cert_file=cert_file,
                                   tls_key_file=key_file)
    try:
        beat = fake.wait_for_heartbeats(node.uuid)[0]["json"]
        assert beat["callback_url"] == session.callback_url == f"https://127.0.0.1:{port}"
        assert "agent_verify_ca" not in beat
        assert runtime.config.auto_tls is False
    finally:
        runtime.state.stop()
        runtime.close()


def test_no_token_from_the_controller_means_lockdown(tmp_path):
    old = StandinController(version="1.50").start()
    try:
        old.add_node(macs=None)
        runtime, session, port = start(old, tmp_path)
        assert session.locked_down_reason and "issued no agent token" in \
            session.locked_down_reason
        assert runtime.state.stopped.is_set()
        # the port taken before lookup is given back: nothing answers on it
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        assert old.heartbeats() == []
    finally:
        old.stop()


def test_a_port_in_use_fails_before_lookup_spends_the_token(fake, tmp_path):
    node = fake.add_node(macs=None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        c = cfg(f"ipa-api-url={fake.url} ipa-advertise-host=127.0.0.1",
                listen_host="127.0.0.1", listen_port=port)
        with pytest.raises(ConfigError, match=f"cannot serve the API on 127.0.0.1 port {port}"):
            run_with_controller(Runtime(c), sleep=pytest.fail)
    # no lookup happened, so the node's one-time token is still unissued
    assert [r for r in fake.requests if r["kind"] == "lookup"] == [] and node.token is None


def test_advertise_port_defaults_to_the_listening_port_unless_set(fake, tmp_path):
    node = fake.add_node(macs=None)
    runtime, session, port = start(fake, tmp_path, "ipa-advertise-port=443")
    try:
        assert session.callback_url == "https://127.0.0.1:443"
        assert fake.wait_for_heartbeats(node.uuid)[0]["json"]["callback_url"] == \
            "https://127.0.0.1:443"
        assert runtime.config.tls_min_version == "1.3"  # from the lookup config
        assert runtime.state.node["uuid"] == node.uuid
    finally:
        runtime.state.stop()
        runtime.close()


def test_only_mdns_urls_is_a_config_error():
    runtime = Runtime(cfg("ipa-api-url=mdns", listen_host="127.0.0.1"))
    with pytest.raises(ConfigError, match="no usable http"):
        run_with_controller(runtime, sleep=pytest.fail)


def test_hardware_initialization_delay_is_honoured_before_lookup(fake, tmp_path):
    node = fake.add_node(macs=None)
    sleeps = []
    c = cfg(f"ipa-api-url={fake.url} ipa-advertise-host=127.0.0.1 "
            "ipa-hardware-initialization-delay=3", listen_host="127.0.0.1",
            listen_port=free_port())
    runtime = Runtime(c)
    try:
        run_with_controller(runtime, sleep=sleeps.append)
        assert sleeps == [3.0]
        fake.wait_for_heartbeats(node.uuid)
    finally:
        runtime.state.stop()
        runtime.close()
