"""The user's door: ``deploy-agent serve | call | deploy | tools | --version``."""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import signal
import sys
import warnings
from typing import Any

from agent import __version__, agentlog, config, tools
from agent.errors import AgentError

LOG = logging.getLogger("agent.cli")


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the agent")
    p.add_argument("--listen", dest="listen_host", help="bind address (default ::)")
    p.add_argument("--port", dest="listen_port", help="port (default 9999)")
    p.add_argument("--standalone", action="store_const", const=True,
                   help="no controller: no lookup, no heartbeat")
    p.add_argument("--token", dest="agent_token", help="require this agent token")
    p.add_argument("--tls-cert", dest="tls_cert_file", help="static certificate (PEM)")
    p.add_argument("--tls-key", dest="tls_key_file", help="static key (PEM)")
    p.add_argument("--auto-tls", action="store_const", const=True,
                   help="serve HTTPS with a generated self-signed certificate")
    p.add_argument("--cmdline", dest="cmdline_file",
                   help="read kernel parameters from this file instead of /proc/cmdline")
    p.add_argument("--config", dest="config_file", help="TOML config file")
    p.add_argument("--ramdisk", choices=("auto", "true", "false"),
                   help="allow power actions (auto: detect an initramfs root)")
    p.add_argument("--include-loop-devices", action="store_const", const=True,
                   help="treat loop devices as disks (tests, local use)")
    p.add_argument("--debug", action="store_const", const=True)
    p.add_argument("--log-file")


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--agent", default="http://127.0.0.1:9999", help="agent URL")
    p.add_argument("--token", help="agent token")
    p.add_argument("--ca", help="CA/certificate file to verify the agent, or 'insecure'")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deploy-agent")
    parser.add_argument("--version", action="version", version=f"deploy-agent {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    _serve_parser(sub)
    call = sub.add_parser("call", help="run one command on an agent")
    _client_args(call)
    call.add_argument("--no-wait", action="store_true", help="do not wait for async commands")
    call.add_argument("name", help="<extension>.<command>")
    call.add_argument("params", nargs="*", help="key=value (values parsed as JSON if possible)")
    sub.add_parser("tools", help="report which system tools are present")
    plan = sub.add_parser("erase-plan", help="print which disks the erase steps would erase "
                                             "for a node (writes nothing)")
    plan.add_argument("--node", help="node JSON file (properties.skip_block_devices, "
                                     "driver_info erase options); default: no node")
    plan.add_argument("--cmdline", dest="cmdline_file",
                      help="read kernel parameters from this file instead of /proc/cmdline")
    plan.add_argument("--config", dest="config_file", help="TOML config file")
    plan.add_argument("--include-loop-devices", action="store_const", const=True,
                      help="treat loop devices as disks (tests, local use)")
    from agent.driver.cli import add_parser as add_deploy_parser
    from agent.driver.standin_cli import add_parser as add_standin_parser
    add_deploy_parser(sub)
    add_standin_parser(sub)
    return parser


def parse_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"parameter {pair!r} is not key=value")
        key, value = pair.split("=", 1)
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


class ProgressPrinter:
    """A live bar on a TTY, plain lines otherwise."""

    def __init__(self, stream: Any = None) -> None:
        # looked up per call, not bound at import, so redirected stderr is honoured
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self._last = ""

    def __call__(self, p: dict[str, Any]) -> None:
        done, total, unit = p.get("done") or 0, p.get("total"), p.get("unit") or ""
        scale, label = (1 << 20, "MiB") if unit == "bytes" else (1, unit)
        rate, eta = p.get("rate"), p.get("eta_s")
        parts = [f"{p.get('phase')}:"]
        if total:
            parts.append(f"{100.0 * done / total:5.1f}%")
            parts.append(f"{done / scale:.1f}/{total / scale:.1f} {label}")
        else:
            parts.append(f"{done / scale:.1f} {label}")
        if rate:
            parts.append(f"{rate / scale:.1f} {label}/s")
        if eta is not None:
            parts.append(f"eta {eta:.0f}s")
        text = " ".join(parts)
        if self.tty:
            width = 30
            filled = int(width * done / total) if total else 0
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r[{bar}] {text}\x1b[K")
            self.stream.flush()
        elif text != self._last:
            self.stream.write(text + "\n")
        self._last = text

    def close(self) -> None:
        if self.tty and self._last:
            self.stream.write("\n")


def make_client(args: argparse.Namespace) -> Any:
    from agent.driver.client import AgentClient
    verify: bool | str = True
    if args.ca == "insecure":
        verify = False
    elif args.ca:
        verify = args.ca
    return AgentClient(args.agent, token=args.token, verify=verify)


def cmd_call(args: argparse.Namespace) -> int:
    from agent.driver.client import AgentAPIError, CommandFailed
    client = make_client(args)
    printer = ProgressPrinter()
    try:
        result = client.post(args.name, parse_params(args.params))
        if not args.no_wait:
            result = client.wait(result, on_progress=printer)
    except CommandFailed as exc:
        printer.close()
        print(json.dumps(exc.result, indent=2))
        return 1
    except (AgentAPIError, OSError) as exc:
        printer.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    printer.close()
    print(json.dumps(result, indent=2))
    return 0


def _wait_for_network(cfg: config.Config) -> bool | None:
    """In a ramdisk with someone to talk to, wait for an address (None: no wait needed).

    The ramdisk's unit starts the agent before network-online.target (see
    agent.hardware.netwait); elsewhere the network is the host's business.
    """
    if cfg.standalone or not (cfg.api_url or cfg.inspection_callback_url or cfg.use_mdns):
        return None
    if not config.is_ramdisk(cfg):
        return None
    from agent.hardware.netwait import wait_for_address
    return wait_for_address(cfg.network_wait_timeout)


def _assemble_md_arrays(cfg: config.Config) -> None:
    """Bring up the md arrays the disks describe, before lookup and inventory.

    An array built by a RAID clean step must be there for the deploy after the
    reboot, and in the inventory.  Only in a ramdisk: an agent tried on a
    workstation must not assemble the host's arrays.  Nothing here may stop the
    agent from starting.
    """
    if not config.is_ramdisk(cfg):
        LOG.debug("not a ramdisk: md arrays are left as they are")
        return
    try:
        from agent.hardware.raid import arrays
        arrays.assemble_all()
    except Exception as exc:  # noqa: BLE001 - a machine without arrays must still start
        LOG.warning("could not assemble md arrays at start: %s", exc)


# requests imports one of these at import time, only to guess the charset of a
# text body that names none; the detector costs ~2.5 MiB resident for good
CHARSET_DETECTORS = ("charset_normalizer", "chardet")


def lean_imports() -> None:
    """Keep the long-lived agent process from loading what it never uses.

    The agent reads JSON (requests finds its UTF encoding without a detector)
    and bytes from every server it talks to; ``Response.text`` on an undeclared charset then falls
    back to UTF-8 with replacement, which is all an error message needs.
    """
    for name in CHARSET_DETECTORS:
        if name not in sys.modules:
            # None: "import" raises ImportError, the documented way to block a module
            sys.modules[name] = None  # type: ignore[assignment]
    warnings.filterwarnings("ignore", message="Unable to find acceptable character detection")


def cmd_serve(args: argparse.Namespace) -> int:
    lean_imports()
    flags = {k: getattr(args, k) for k in (
        "listen_host", "listen_port", "standalone", "agent_token", "tls_cert_file",
        "tls_key_file", "auto_tls", "ramdisk", "include_loop_devices", "debug", "log_file")}
    from agent.ironic import vmedia
    # boot_method=vmedia: parameters.txt joins the kernel parameters before they are parsed
    media = vmedia.from_cmdline(args.cmdline_file)
    try:
        cfg = config.load(cmdline_file=args.cmdline_file, config_file=args.config_file,
                          flags=flags, extra_cmdline=media.params)
    except AgentError as exc:
        print(f"deploy-agent: {exc.details}", file=sys.stderr)
        return 2
    agentlog.setup(cfg.debug, cfg.log_file)
    vmedia.apply(media, cfg)
    from agent.runtime import Runtime
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # `kill -USR1 <pid>` prints every thread's stack: the way into a hung deploy
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    runtime = Runtime(cfg)
    if cfg.standalone:
        mode = "standalone"
    elif cfg.api_url:
        mode = "controller " + ",".join(cfg.api_url)
    else:
        mode = "no controller" + (": inspection only" if cfg.inspection_callback_url else "")
    LOG.info("deploy-agent %s starting (%s)", __version__, mode)
    _assemble_md_arrays(cfg)
    try:
        vmedia.configure_network(media, cfg)    # static addresses before any traffic to Ironic
        if cfg.enable_vlan_interfaces:
            from agent.hardware.vlan import create_vlan_interfaces
            # before the DHCP wait and the lookup, which may need these VLANs
            create_vlan_interfaces(cfg)
        if cfg.api_url and not cfg.standalone and not cfg.tls_cert_file:
            from agent import tls
            # auto-TLS is the norm with Ironic; its import overlaps the waits below
            tls.preload_in_background()
        _wait_for_network(cfg)
        from agent.ironic import mdns
        # once the network is up and before NTP: the record may name the NTP server
        mdns.resolve_at_start(cfg)
        from agent.hardware import clock
        # once the network is up and before any TLS: a clock years off makes
        # Ironic's certificate "not yet valid" and dates our auto-TLS one wrongly
        clock.sync_at_start(cfg)
        node_uuid = None
        if cfg.inspection_callback_url and not cfg.standalone:
            from agent.ironic.inspect import run_inspection
            node_uuid = run_inspection(runtime)
        if cfg.standalone or not cfg.api_url:
            # a managed inspection boot (callback, no API URL) stays up idle
            runtime.start_api()
        else:
            from agent.ironic.session import run_with_controller
            run_with_controller(runtime, node_uuid=node_uuid)
        runtime.wait()
    except AgentError as exc:
        LOG.error("startup failed: %s", exc.details)
        return 1
    except OSError as exc:
        # typically the port is taken (cheroot names it): one line, not a traceback
        LOG.error("startup failed: %s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        # cheroot's workers are not daemon threads: without this, SIGTERM
        # leaves the interpreter waiting for them forever
        runtime.close()
    return 0


def cmd_tools(_: argparse.Namespace) -> int:
    found = tools.check_tools()
    for name in sorted(found):
        print(f"{name:14} {found[name] or 'MISSING'}")
    for line in tools.missing_report(found):
        print(line, file=sys.stderr)
    return 1 if any(not found[n] and tools.TOOLS[n].required for n in found) else 0


def cmd_erase_plan(args: argparse.Namespace) -> int:
    from agent.hardware.erase_preview import preview
    from agent.state import AgentState

    try:
        cfg = config.load(cmdline_file=args.cmdline_file, config_file=args.config_file,
                          flags={"include_loop_devices": args.include_loop_devices,
                                 "standalone": True})
        node = None
        if args.node:
            with open(args.node, encoding="utf-8") as f:
                node = json.load(f)
    except AgentError as exc:
        print(f"deploy-agent: {exc.details}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"deploy-agent: cannot read the node file: {exc}", file=sys.stderr)
        return 2
    agentlog.setup(False, None)
    result = preview(AgentState(cfg), node)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 1 if result["refused"] else 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from agent.driver.cli import run
    code = run(args, ProgressPrinter())
    # The process ends next.  Its interpreter's final collections walk every
    # object requests and the driver made (~0.1 s, measured in bench/fixed_cost.py);
    # frozen objects are skipped and their memory goes back with the process.
    import gc
    gc.freeze()
    return code


def cmd_standin(args: argparse.Namespace) -> int:
    from agent.driver.standin_cli import run
    return run(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"serve": cmd_serve, "call": cmd_call, "tools": cmd_tools,
                "deploy": cmd_deploy, "standin": cmd_standin, "erase-plan": cmd_erase_plan}
    return handlers[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
