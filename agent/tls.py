"""TLS: the per-boot self-signed certificate and the server SSL context."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import tempfile
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

# cryptography is imported only when a certificate is generated: it costs
# about 8 MiB of RSS that an agent serving plain HTTP or a static cert never needs
CURVES = {"p256": "SECP256R1", "p384": "SECP384R1", "p521": "SECP521R1"}
CLOCK_SKEW = datetime.timedelta(hours=1)
VALIDITY = datetime.timedelta(days=30)


def preload_in_background() -> threading.Thread:
    """Import what generate_certificate needs on a daemon thread, and return it.

    At start the agent spends seconds waiting for DHCP and the lookup's round
    trips; on a slow or emulated CPU cryptography's import is a second of its
    own, which this moves into those waits.  Imports take per-module locks, so
    a generate_certificate that comes first simply waits for the thread's.
    """
    def load() -> None:
        try:
            from cryptography import x509  # noqa: F401
            from cryptography.hazmat.primitives import hashes, serialization  # noqa: F401
            from cryptography.hazmat.primitives.asymmetric import ec  # noqa: F401
        except ImportError:             # reported where the certificate is made
            pass

    thread = threading.Thread(target=load, name="tls-preload", daemon=True)
    thread.start()
    return thread


def generate_certificate(ip: str, curve: str = "p384",
                         hostname: str | None = None) -> tuple[str, str]:
    """Return (certificate PEM, key PEM) for a self-signed cert whose SAN is ``ip``.

    Back-dated an hour because ramdisk clocks are often wrong before NTP; the
    SAN is critical and carries only the advertise IP the conductor pins.  Key
    identifiers and basicConstraints keep strict RFC 5280 verifiers happy.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key: ec.EllipticCurvePrivateKey = ec.generate_private_key(getattr(ec, CURVES[curve])())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                         hostname or socket.gethostname() or "deploy-agent")])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(ip))]), critical=True)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public),
                           critical=False)
            .sign(key, hashes.SHA512()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return cert_pem, key_pem


def write_pair(cert_pem: str, key_pem: str, directory: str | None = None) -> tuple[str, str]:
    """Write the pair to private files (the SSL module only loads from paths)."""
    directory = directory or tempfile.mkdtemp(prefix="deploy-agent-tls-")
    cert_path = os.path.join(directory, "agent.crt")
    key_path = os.path.join(directory, "agent.key")
    for path, data in ((cert_path, cert_pem), (key_path, key_pem)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(data)
    return cert_path, key_path


def server_context(cert_file: str, key_file: str, min_version: str = "1.2",
                   ciphers: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (ssl.TLSVersion.TLSv1_3 if min_version == "1.3"
                           else ssl.TLSVersion.TLSv1_2)
    ctx.load_cert_chain(cert_file, key_file)
    ctx.set_ciphers(ciphers or "ECDHE+AESGCM:ECDHE+CHACHA20")
    return ctx
