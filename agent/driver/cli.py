"""``deploy-agent deploy``: drive one deploy through an agent, the way Ironic's conductor does."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from agent.errors import AgentError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "deploy", help="deploy an image through an agent (conductor-like driver)",
        description="Write an image with the agent's write_image deploy step, then read the "
                    "partition UUIDs, install the bootloader when needed, sync and power off, "
                    "exactly in the order Ironic's conductor uses.")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--agent", help="agent URL, e.g. https://10.0.0.15:9999")
    where.add_argument("--controller",
                       help="stand-in controller URL: wait for the node's first heartbeat and use "
                            "its agent URL, token and pinned certificate")
    p.add_argument("--node", help="node UUID (required with --controller)")
    p.add_argument("--token", help="agent token (with --agent)")
    p.add_argument("--ca", help="CA/certificate file to verify the agent, or 'insecure'")
    p.add_argument("--image", required=True, help="image URL the agent downloads")
    p.add_argument("--checksum", required=True,
                   help="sha256:<hex> (any hashlib name), a bare hex digest, or the URL of a "
                        "checksums file")
    p.add_argument("--image-id", help="image id (default: the URL's file name)")
    p.add_argument("--disk-format", default="raw")
    p.add_argument("--configdrive", help="config drive: a file (ISO, gzip, base64 or JSON), "
                                         "inline JSON, or a URL")
    p.add_argument("--root-device", help='root device hints as JSON, e.g. \'{"name": '
                                         '"/dev/sda"}\' or \'{"size": ">= 100"}\'')
    p.add_argument("--boot-mode", choices=("bios", "uefi"), default="bios")
    p.add_argument("--no-power-off", action="store_true",
                   help="sync and leave the node running instead of powering it off")
    p.add_argument("--logs-dir", help="save the agent's logs here when a step fails")
    p.add_argument("--wait", type=float, default=600.0,
                   help="seconds to wait for the agent to come up (default 600)")
    p.add_argument("--poll", type=float, default=2.0,
                   help="seconds between status checks (default 2)")


def _verify(ca: str | None, default: bool | str = True) -> bool | str:
    if ca == "insecure":
        return False
    return ca or default


def _node(args: argparse.Namespace, base: dict[str, Any] | None) -> dict[str, Any]:
    node = json.loads(json.dumps(base or {"uuid": args.node, "properties": {},
                                           "instance_info": {}, "driver_internal_info": {}}))
    if args.root_device:
        try:
            hints = json.loads(args.root_device)
        except ValueError as exc:
            raise SystemExit(f"--root-device is not JSON: {exc}") from None
        if not isinstance(hints, dict):
            raise SystemExit("--root-device must be a JSON object of hints")
        node.setdefault("properties", {})["root_device"] = hints
    node.setdefault("instance_info", {})["deploy_boot_mode"] = args.boot_mode
    return node


def run(args: argparse.Namespace, printer: Callable[[dict[str, Any]], None] | Any) -> int:
    # the pinned certificate lives only as long as this command
    with tempfile.TemporaryDirectory(prefix="deploy-agent-ca-") as ca_dir:
        return _run(args, printer, ca_dir)


def _run(args: argparse.Namespace, printer: Callable[[dict[str, Any]], None] | Any,
         ca_dir: str) -> int:
    import requests  # only this command needs it; `serve` must stay lean

    from agent.driver import conductor
    from agent.driver import request as deploy_request
    from agent.driver.client import AgentAPIError

    def on_event(kind: str, data: Any) -> None:
        if kind == "progress":
            printer(data)
        else:
            # on a TTY, clear the live bar's line; the next update redraws it
            prefix = "\r\x1b[K" if getattr(printer, "tty", False) else ""
            sys.stderr.write(f"{prefix}deploy: {data}\n")
            sys.stderr.flush()

    try:
        if args.controller:
            if not args.node:
                raise SystemExit("--controller needs --node UUID")
            found = conductor.endpoint_from_controller(args.controller, args.node,
                                                       timeout=args.wait, on_event=on_event,
                                                       ca_dir=ca_dir)
            client = conductor.agent_client(found.url, found.token,
                                            _verify(args.ca, found.verify))
            node = _node(args, found.node)
        else:
            client = conductor.agent_client(args.agent, args.token, _verify(args.ca))
            conductor.wait_for_agent(client, timeout=args.wait)
            node = _node(args, None)
        configdrive = deploy_request.load_configdrive(args.configdrive)
        info = deploy_request.build_image_info(args.image, args.checksum, image_id=args.image_id,
                                          disk_format=args.disk_format,
                                          node_uuid=node.get("uuid"), configdrive=configdrive)
        plan = conductor.DeployPlan(image_info=info, configdrive=configdrive, node=node,
                                    boot_mode=args.boot_mode,
                                    power_off=not args.no_power_off)
        # one interval for both: the conductor's 6 s install_bootloader polling
        # is tuned for hundreds of nodes, not one operator watching
        driver = conductor.Conductor(client, on_event=on_event, poll_interval=args.poll,
                                     bootloader_interval=args.poll, logs_dir=args.logs_dir)
        report = driver.deploy(plan)
    except AgentAPIError as exc:
        _close(printer)
        print(f"deploy failed: agent API error {exc.details}", file=sys.stderr)
        return 2
    except requests.RequestException as exc:
        _close(printer)
        print(f"deploy failed: cannot reach the agent: {exc}", file=sys.stderr)
        return 2
    except AgentError as exc:
        _close(printer)
        print(f"deploy failed: {exc.details}", file=sys.stderr)
        return 1
    _close(printer)
    print(json.dumps(dataclasses.asdict(report), indent=2))
    return 0


def _close(printer: Any) -> None:
    close = getattr(printer, "close", None)
    if close:
        close()
