"""``deploy-agent standin``: run the stand-in controller in the foreground for operators."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def _load_spec(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a JSON object")
    # either {"node": {...}, "macs": [...], ...} or the node object itself
    return data if "node" in data else {"node": data}


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "standin", help="serve Ironic's lookup and heartbeat endpoints (no Ironic needed)",
        description="Serve Ironic's lookup and heartbeat endpoints for one or more nodes, "
                    "so a ramdisk can boot and be deployed without Ironic.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6385)
    parser.add_argument("--node-json", action="append", required=True,
                        help='node file: the node object, or {"node": {...}, "macs": [...], '
                             '"config": {...}, "provision_state": "...", "token": "..."}')
    parser.add_argument("--api-version", default="1.99")
    parser.add_argument("--config-json", help="lookup config overrides (a JSON object file)")
    parser.add_argument("--allow-http", action="store_true",
                        help="accept plain-HTTP callback URLs ([agent]require_tls = False)")


def run(args: argparse.Namespace) -> int:
    # add_parser runs in every `deploy-agent` process, the agent's too: the
    # controller (a Flask app of its own, requests) loads only for this command
    from agent.driver.standin import StandinController

    config: dict[str, Any] = {}
    if args.config_json:
        with open(args.config_json, encoding="utf-8") as f:
            config = json.load(f)
    controller = StandinController(version=args.api_version, require_tls=not args.allow_http,
                                host=args.host, port=args.port)
    for path in args.node_json:
        spec = _load_spec(path)
        controller.config.update(spec.get("config") or {})
        node = controller.add_node(spec["node"], macs=spec.get("macs"),
                                   provision_state=spec.get("provision_state",
                                                            "wait call-back"),
                                   token=spec.get("token"))
        print(f"node {node.uuid}: macs {node.macs or 'any'}", flush=True)
    controller.config.update(config)
    controller.start()
    print(f"stand-in controller listening on {controller.url}; agents boot with "
          f"ipa-api-url={controller.url}", flush=True)
    seen: dict[str, int] = {}
    try:
        while True:
            time.sleep(1)
            for node in list(controller.nodes.values()):
                if node.heartbeats != seen.get(node.uuid, 0):
                    if not seen.get(node.uuid):
                        print(f"node {node.uuid}: agent at {node.agent_url} "
                              f"(version {node.agent_version})", flush=True)
                    seen[node.uuid] = node.heartbeats
    except KeyboardInterrupt:
        controller.stop()
    return 0
