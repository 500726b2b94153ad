"""Assemble one agent: config → state → extensions → runner → app → server."""

from __future__ import annotations

import logging
import os
import shutil
import threading
from typing import Any

from flask import Flask

from agent import api, tls, tools
from agent.commands import CommandRunner
from agent.config import Config
from agent.extensions import load_extensions
from agent.server import AgentServer
from agent.state import AgentState

LOG = logging.getLogger(__name__)


class Runtime:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.state = AgentState(config)
        self.state.tool_report = tools.check_tools()
        for line in tools.missing_report(self.state.tool_report):
            LOG.warning("tool check: %s", line)
        inert = config.inert_settings_given()
        if inert:
            LOG.warning("settings accepted but not used yet, so they have no effect: %s",
                        ", ".join(inert))
        self.runner = CommandRunner(load_extensions(self.state), config.max_results)
        self.app: Flask = api.create_app(self.state, self.runner)
        self.server: AgentServer | None = None
        self.cert_pem: str | None = None
        # set by agent.ironic.session.run_with_controller when a controller drives us
        self.controller: Any = None

    def tls_files(self, advertise_ip: str | None) -> tuple[str | None, str | None, bool]:
        """Certificate and key paths, and whether they are generated temporaries."""
        cfg = self.config
        if cfg.tls_cert_file:
            with open(cfg.tls_cert_file, encoding="utf-8") as f:
                self.cert_pem = f.read()
            return cfg.tls_cert_file, cfg.tls_key_file, False
        if cfg.auto_tls:
            ip = advertise_ip or "127.0.0.1"
            cert, key = tls.generate_certificate(ip, cfg.tls_certificate_curve)
            self.cert_pem = cert
            return *tls.write_pair(cert, key), True
        return None, None, False

    def bind_api(self) -> AgentServer:
        """Take the API port before anything that cannot be undone (the one-time token).

        A port in use then fails the start before lookup, instead of after it,
        when the token Ironic handed out would be lost with the process.
        """
        if self.server is None:
            self.server = AgentServer(self.app, self.config.listen_host,
                                      self.config.listen_port,
                                      max_body=self.config.max_request_bytes)
        self.server.bind()
        return self.server

    def start_api(self, advertise_ip: str | None = None) -> AgentServer:
        cert, key, generated = self.tls_files(advertise_ip)
        try:
            if self.server is None:
                self.server = AgentServer(self.app, self.config.listen_host,
                                          self.config.listen_port,
                                          max_body=self.config.max_request_bytes)
            if cert and key:
                self.server.use_tls(cert, key, self.config.tls_min_version,
                                    self.config.tls_cipher_suites)
        finally:
            # the SSL context holds the key in memory once loaded; a private key
            # left in /tmp would outlive the agent for nothing
            if generated and cert:
                shutil.rmtree(os.path.dirname(cert), ignore_errors=True)
        self.server.start()
        self.state.on_stop.append(self.server.stop)
        return self.server

    def close(self) -> None:
        """Stop serving so the process can exit."""
        if self.server is not None:
            self.server.stop()

    def wait(self) -> None:
        """Block until stopped; lockdown keeps the process alive so no restart happens."""
        self.state.stopped.wait()
        if self.config.exit_on_stop:
            return
        LOG.warning("agent stopped serving; idling")
        threading.Event().wait()
