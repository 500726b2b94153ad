"""Virtual media the way Ironic 39 builds it: a vfat ``ir-vfd-dev`` image and an ISO.

The vfat image is made with the same tools Ironic runs (``mkfs.vfat -n
ir-vfd-dev``, ``mcopy``); the ISO with pycdlib, Rock Ridge and Joliet like
``mkisofs -r -J``, labelled ``config-2`` when it carries ``openstack/``.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import os
import subprocess
from collections.abc import Callable, Iterator

import pycdlib
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_vfd(path: str, files: dict[str, bytes], label: str = "ir-vfd-dev") -> str:
    with open(path, "wb") as f:
        f.truncate(1440 * 1024)
    subprocess.run(["mkfs.vfat", "-n", label, path], check=True, capture_output=True)
    src = os.path.dirname(path)
    for name, data in files.items():
        local = os.path.join(src, name)
        with open(local, "wb") as f:
            f.write(data)
        subprocess.run(["mcopy", "-i", path, local, "::"], check=True, capture_output=True)
    return path


def make_iso(path: str, files: dict[str, bytes], label: str | None = None) -> str:
    label = label or ("config-2" if any(p.startswith("openstack/") for p in files)
                      else "VMEDIA_BOOT_ISO")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=4, rock_ridge="1.09", joliet=3, vol_ident=label)
    made = set()
    for rel, data in files.items():
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            d = "/".join(parts[:depth])
            if d not in made:
                iso.add_directory(iso_path="/" + d.upper().replace("-", "_").replace(".", "_"),
                                  rr_name=parts[depth - 1], joliet_path="/" + d)
                made.add(d)
        iso_dir = "/".join(p.upper().replace("-", "_").replace(".", "_") for p in parts[:-1])
        iso_name = parts[-1].upper().replace("-", "_")
        iso.add_fp(io.BytesIO(data), len(data),
                   iso_path=f"/{iso_dir + '/' if iso_dir else ''}{iso_name};1",
                   rr_name=parts[-1], joliet_path="/" + rel)
    iso.write(path)
    iso.close()
    return path


@pytest.fixture
def attach() -> Iterator[Callable[..., str]]:
    """``attach(image, read_only=False) -> /dev/loopN``; detached at the end."""
    made: list[str] = []

    def run(image: str, read_only: bool = False) -> str:
        args = ["losetup", "-f", "--show", *(["-r"] if read_only else []), image]
        dev = subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()
        made.append(dev)
        return dev

    yield run
    for dev in made:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def make_ca_and_server_cert(directory: str) -> tuple[str, str, str]:
    """(ca.pem, server.pem, server.key) with the server certificate valid for 127.0.0.1."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ironic CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(
              digital_signature=True, content_commitment=False, key_encipherment=False,
              data_encipherment=False, key_agreement=False, key_cert_sign=True,
              crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())

    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = [os.path.join(directory, n) for n in ("ca.pem", "server.pem", "server.key")]
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths[0], paths[1], paths[2]
