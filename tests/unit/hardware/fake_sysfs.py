"""Build sysfs-shaped trees for disks this machine does not have.

The layout copies what the kernel creates: /sys/block/<name> is a symlink
into /sys/devices/<bus path>/block/<name>, ``device`` links to the SCSI
device or NVMe controller, attributes are one-line files.
"""

from __future__ import annotations

import os
from pathlib import Path


def write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


def add_block(root: Path, name: str, bus_path: str, *, devno: str, sectors: int,
              device_rel: str | None = None, attrs: dict[str, str | bytes] | None = None,
              queue: dict[str, str] | None = None) -> Path:
    """Create /sys/devices/<bus_path>/block/<name> and its /sys/block link."""
    real = root / "sys/devices" / bus_path / "block" / name
    real.mkdir(parents=True)
    write(real / "dev", devno + "\n")
    write(real / "size", f"{sectors}\n")
    write(real / "ro", "0\n")
    q = {"rotational": "0", "logical_block_size": "512", "physical_block_size": "512"}
    q.update(queue or {})
    for key, value in q.items():
        write(real / "queue" / key, value + "\n")
    if device_rel is not None:
        os.symlink(device_rel, real / "device")
    for key, value in (attrs or {}).items():
        write(real / key, value)
    (root / "sys/block").mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(real, root / "sys/block"), root / "sys/block" / name)
    return real


def vpd_pg80(serial: str) -> bytes:
    data = serial.encode()
    return bytes([0, 0x80]) + len(data).to_bytes(2, "big") + data


def server_tree(root: Path) -> Path:
    """A SATA SSD, a RAID-controller LUN, an NVMe namespace, an md mirror and noise."""
    # SATA SSD behind AHCI at 0000:00:17.0, port ata3
    scsi = "pci0000:00/0000:00:17.0/ata3/host2/target2:0:0/2:0:0:0"
    add_block(root, "sda", scsi, devno="8:0", sectors=976773168, device_rel="../../../2:0:0:0")
    dev = root / "sys/devices" / scsi
    write(dev / "model", "Samsung SSD 860 \n")
    write(dev / "vendor", "ATA     \n")
    write(dev / "wwid", "naa.5002538e40a1b2c3\n")
    write(dev / "vpd_pg80", vpd_pg80("S3Z2NB0K123456A"))
    write(root / "sys/class/ata_port/ata3/port_no", "3\n")

    # PERC LUN: SCSI host 0 on 0000:18:00.0 (same layout as the reference's example)
    perc = "pci0000:17/0000:17:00.0/0000:18:00.0/host0/target0:2:0/0:2:0:0"
    add_block(root, "sdb", perc, devno="8:16", sectors=936640512,
              device_rel="../../../0:2:0:0", queue={"rotational": "1",
                                                    "physical_block_size": "4096"})
    dev = root / "sys/devices" / perc
    write(dev / "model", "PERC H740P Mini \n")
    write(dev / "vendor", "DELL    \n")
    write(dev / "wwid", "naa.6b8ca3a0e7f1e2002a1b2c3d4e5f6071\n")
    write(dev / "vpd_pg80", vpd_pg80("00b4c5d6e7f8091a2b3c4d5e6f708192"))
    (root / "sys/devices/pci0000:17/0000:17:00.0/0000:18:00.0/host1").mkdir()

    # NVMe namespace 1 of controller nvme0 at 0000:3b:00.0
    ctrl = "pci0000:3a/0000:3a:00.0/0000:3b:00.0/nvme/nvme0"
    add_block(root, "nvme0n1", ctrl, devno="259:0",
              sectors=1953525168, device_rel="../../../nvme0",
              attrs={"wwid": "eui.0025388b91c2d3e4\n", "nsid": "1\n"})
    write(root / "sys/devices" / ctrl / "serial", "PHLJ9123004T1P0FGN  \n")
    write(root / "sys/devices" / ctrl / "model", "INTEL SSDPE2KX010T8 \n")

    # an md mirror of sdc + sdd: members are hidden, the array is listed
    md = add_block(root, "md0", "virtual", devno="9:0", sectors=20969472)
    write(md / "md" / "level", "raid1\n")
    for name, port in (("sdc", 4), ("sdd", 5)):
        path = f"pci0000:00/0000:00:17.0/ata{port}/host{port}/target{port}:0:0/{port}:0:0:0"
        real = add_block(root, name, path, devno=f"8:{16 * port}", sectors=20971520,
                         device_rel=f"../../../{port}:0:0:0")
        (real / "holders").mkdir()
        os.symlink(os.path.relpath(md, real / "holders"), real / "holders" / "md0")

    # noise the listing must drop
    add_block(root, "sr0", "pci0000:00/0000:00:17.0/ata9/host8/target8:0:0/8:0:0:0",
              devno="11:0", sectors=2097152, device_rel="../../../8:0:0:0")
    write(root / "sys/devices/pci0000:00/0000:00:17.0/ata9/host8/target8:0:0/8:0:0:0/type",
          "5\n")
    add_block(root, "ram0", "virtual", devno="1:0", sectors=8192)
    add_block(root, "zram0", "virtual", devno="252:0", sectors=8192)
    add_block(root, "loop0", "virtual", devno="7:0", sectors=2097152)
    add_block(root, "loop1", "virtual", devno="7:1", sectors=0)
    add_block(root, "sde", "pci0000:00/0000:00:17.0/ata11/host10/target10:0:0/10:0:0:0",
              devno="8:96", sectors=0, device_rel="../../../10:0:0:0")
    dm = add_block(root, "dm-0", "virtual", devno="253:0", sectors=2097152)
    write(dm / "dm" / "uuid", "LVM-abcdef\n")
    add_block(root, "nvme0c0n1", ctrl, devno="259:9", sectors=1953525168,
              attrs={"hidden": "1\n"})
    return root
