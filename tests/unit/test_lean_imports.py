"""What an idle agent process holds: heavy modules load with the command that needs them.

Each check runs in a fresh interpreter, assembled the way ``deploy-agent serve``
assembles the agent, because ``sys.modules`` of the test process already holds
everything the suite imported.  No timing is checked, only which modules are loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# loaded by a command that uses them, never by start-up or by listing steps
NOT_AT_IDLE = (
    "cryptography",                     # auto-TLS certificates, random-pattern erase
    "pycdlib",                          # config drives, vmedia ISOs
    "requests",                         # image downloads; the controller's client
    "charset_normalizer",               # never: requests' charset guess (lean_imports)
    "zstandard", "tenacity",            # the image path
    "agent.imaging.deploy",
    "agent.imaging.inject_files",
    "agent.imaging.bootloader.install",
    "agent.hardware.erase",
    "agent.hardware.erase_overwrite",
    "agent.hardware.raid.apply",
    "agent.hardware.raid.teardown",
    "agent.driver.standin",
)

ASSEMBLE = """
import json, sys
from agent import cli, config
cli.build_parser()
cli.lean_imports()
from agent.runtime import Runtime
cfg = config.load(cmdline="", read_proc=False,
                  flags={"standalone": True})
runtime = Runtime(cfg)
node = {"uuid": "1be26c0b-03f2-4d2d-ae87-c02d7f33c781", "properties": {}, "driver_info": {}}
steps = {}
for kind in ("clean", "deploy", "service"):
    result = runtime.runner.execute(f"{kind}.get_{kind}_steps", {"node": node, "ports": []},
                                    wait=True)
    assert result.status == "SUCCEEDED", result.to_dict()
    steps[kind] = sorted(s["step"] for listed in result.result[f"{kind}_steps"].values()
                         for s in listed)
print(json.dumps({"modules": sorted(k for k, v in sys.modules.items() if v is not None),
                  "steps": steps}))
"""

CHARSET = """
import http.server, json, sys, threading, warnings
warnings.simplefilter("error")          # the missing detector must not even warn
from agent import cli
cli.lean_imports()
import requests

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"caf\\u00e9": "ok"}).encode() if self.path == "/json" \\
            else "fault: caf\\u00e9".encode()
        self.send_response(200 if self.path == "/json" else 500)
        # no charset named: requests would ask a detector for text
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{server.server_port}"
out = {"json": requests.get(url + "/json", timeout=10).json(),
       "text": requests.get(url + "/fault", timeout=10).text,
       "loaded": [m for m in ("charset_normalizer", "chardet") if sys.modules.get(m)]}
server.shutdown()
print(json.dumps(out))
"""


def _run(code: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOY_AGENT_")}
    env["PYTHONPATH"] = REPO
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_start_up_and_step_listing_load_no_heavy_module() -> None:
    out = _run(ASSEMBLE)
    loaded = set(out["modules"])
    assert sorted(m for m in NOT_AT_IDLE if m in loaded) == []
    # the listings still name the steps whose code was left unloaded
    assert {"erase_devices", "erase_devices_metadata", "delete_configuration",
            "clean_uefi_nvram"} <= set(out["steps"]["clean"])
    assert {"write_image", "inject_files", "apply_configuration",
            "clean_uefi_nvram"} <= set(out["steps"]["deploy"])
    assert {"write_image", "inject_files"} <= set(out["steps"]["service"])


def test_requests_works_without_a_charset_detector() -> None:
    out = _run(CHARSET)
    assert out["loaded"] == []
    assert out["json"] == {"café": "ok"}
    assert out["text"] == "fault: café"     # UTF-8, the fallback without a detector


PRELOAD = """
import json, sys
from agent import tls
before = "cryptography.x509" in sys.modules
thread = tls.preload_in_background()
thread.join(60)
after = sorted(m for m in ("cryptography.x509", "cryptography.hazmat.primitives.asymmetric.ec")
               if m in sys.modules)
cert, key = tls.generate_certificate("192.0.2.5", "p256")
print(json.dumps({"before": before, "after": after, "daemon": thread.daemon,
                  "cert": cert.startswith("-----BEGIN CERTIFICATE")}))
"""


def test_the_tls_preload_loads_cryptography_off_the_main_thread() -> None:
    out = _run(PRELOAD)
    assert out == {"before": False, "daemon": True, "cert": True,
                   "after": ["cryptography.hazmat.primitives.asymmetric.ec",
                             "cryptography.x509"]}
