"""``tools/vm-deploy``: argument parsing and the exit code."""

from __future__ import annotations

import argparse
import os

from vm import procs
from vm.report import say

EPILOG = """\
exit status: 0 when the run proved its point (the deployed OS booted; for
--negative, the deploy failed clearly and the disk did not boot; for --raid,
the array was made, deployed onto and booted whole and without each member in
turn; for --arch ppc64el and arm64, the agent answered poll.get_hardware_info; for
--ironic, the whole lifecycle passed; for --partition-image, the partition
image booted through the ESP the agent filled), 1 when it did not, 2 on
bad usage or a missing prerequisite.  Artifacts are cached in .cache/vm/
(VM_DEPLOY_CACHE overrides), each run's logs in .cache/vm/runs/."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="vm-deploy", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Boot the deploy ramdisk in QEMU through iPXE, deploy a small test OS "
                    "with a config drive through the agent, and boot the deployed disk.")
    p.add_argument("--arch", choices=("amd64", "ppc64el", "arm64"), default="amd64",
                   help="amd64: the full deploy; ppc64el: boot the ramdisk under "
                        "qemu-system-ppc64 -M pseries and run poll.get_hardware_info; "
                        "arm64: the same under qemu-system-aarch64 -M virt with UEFI")
    p.add_argument("--firmware", choices=("bios", "uefi"), default="bios",
                   help="SeaBIOS or OVMF (amd64)")
    p.add_argument("--negative", choices=("bad-checksum", "unreachable-image"),
                   help="expect the deploy to fail this way and the disk not to boot")
    p.add_argument("--raid", choices=("1", "5"),
                   help="software RAID: 2 (RAID-1) or 3 (RAID-5) disks; the agent's "
                        "raid.create_configuration clean step makes the array, the ramdisk "
                        "reboots, the test OS is deployed onto it and booted, then booted "
                        "again without each member in turn")
    p.add_argument("--partition-image", action="store_true",
                   help="with --firmware uefi: deploy the test OS's root filesystem as a "
                        "partition image (its /boot/efi holds its grub) with the controller's "
                        "enable_bios_bootloader_install on; the agent fills the empty ESP and "
                        "writes NVRAM entries, then the disk is booted")
    p.add_argument("--ironic", action="store_true",
                   help="instead of the stand-in controller, a real Ironic (.venv-ironic; "
                        "tools/dev-setup --ironic) drives the VM through IPMI (ipmi_sim) and "
                        "its own iPXE boot: enroll, manage, inspect, clean, deploy with a "
                        "config drive, boot the disk, undeploy with cleaning")
    p.add_argument("--no-inspect", dest="ironic_inspect", action="store_false",
                   help="with --ironic: skip the inspection (Ironic's agent inspect interface)")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                   help="auto: KVM when a probe shows it runs guests fast, else TCG")
    p.add_argument("--ramdisk-dir", help="use this kernel + initramfs instead of building "
                                         "(must hold deploy-agent.kernel/.initramfs)")
    p.add_argument("--cache-dir", help="artifact cache (default .cache/vm)")
    p.add_argument("--memory", type=int, default=1024,
                   help="guest RAM in MiB (default 1024, the ramdisk's budget on every "
                        "architecture)")
    p.add_argument("--smp", type=int, default=2,
                   help="guest CPUs (default 2: QEMU's TCG runs one host thread per CPU, and "
                        "the ramdisk's units and the agent's start-up overlap on two)")
    p.add_argument("--kernel-arg", action="append", default=[],
                   help="extra ramdisk kernel parameter, e.g. ipa-debug=1 (repeatable)")
    p.add_argument("--api-timeout", type=float, default=300.0,
                   help="seconds from power on to the agent's first heartbeat")
    p.add_argument("--deploy-timeout", type=float, default=300.0,
                   help="seconds for the whole deploy, write_image to power off")
    p.add_argument("--json", help="write the result and timings to this file")
    args = p.parse_args(argv)
    if args.arch in ("ppc64el", "arm64") and (args.negative or args.firmware != "bios"):
        p.error(f"--arch {args.arch} is a smoke test: no --negative or --firmware "
                "(arm64 always boots through UEFI)")
    if not args.ironic_inspect and not args.ironic:
        p.error("--no-inspect needs --ironic")
    if args.ironic and (args.negative or args.arch != "amd64" or args.firmware != "bios"):
        p.error("--ironic runs the BIOS lifecycle on amd64 only: no --negative, --arch or "
                "--firmware uefi")
    if args.raid and (args.negative or args.arch != "amd64"):
        p.error("--raid runs on amd64 and proves a working deploy: no --negative or --arch")
    if args.partition_image and (args.firmware != "uefi" or args.negative or args.raid
                                 or args.ironic or args.arch != "amd64"):
        p.error("--partition-image runs with --firmware uefi on amd64 only: no --negative, "
                "--raid or --ironic")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cache_dir:
        os.environ["VM_DEPLOY_CACHE"] = os.path.abspath(args.cache_dir)
    from realironic.server import IronicMissing

    from vm import (
        arm,
        bmc,
        flow,
        ironicflow,
        ironicraid,
        partflow,
        ppc,
        qemu,
        raidflow,
        ramdisk,
        runbase,
        testos,
    )

    # IronicOptions is flow.Options plus the --ironic switches, for every kind of run
    opts = ironicflow.IronicOptions(
        firmware=args.firmware, negative=args.negative, accel=args.accel,
        ramdisk_dir=args.ramdisk_dir, cache_dir=args.cache_dir, memory_mib=args.memory,
        smp=args.smp, kernel_args=args.kernel_arg, api_timeout=args.api_timeout,
        deploy_timeout=args.deploy_timeout, json_path=args.json,
        ironic_inspect=args.ironic_inspect, raid=args.raid)
    prerequisites = (qemu.QemuMissing, ramdisk.RamdiskError, testos.BuildError, IronicMissing,
                     bmc.BmcMissing)
    with procs.Supervisor() as sup:
        run: runbase.RunBase
        if args.ironic and args.raid:
            run = ironicraid.IronicRaidRun(opts, sup)
        elif args.ironic:
            run = ironicflow.IronicRun(opts, sup)
        elif args.arch == "ppc64el":
            run = ppc.SmokeRun(opts, sup)
        elif args.arch == "arm64":
            run = arm.SmokeRun(opts, sup)
        elif args.raid:
            run = raidflow.RaidRun(opts, sup)
        elif args.partition_image:
            run = partflow.PartitionRun(opts, sup)
        else:
            run = flow.DeployRun(opts, sup)
        try:
            run.execute()
        except procs.Interrupted:
            say("interrupted; stopping everything this run started")
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is reported the same way
            run.on_failure(exc)
            run.timings.print()
            run.write_json(False, f"{type(exc).__name__}: {exc}")
            if isinstance(exc, prerequisites):
                return 2
            return 1
        run.timings.print()
        run.write_json(True, None)
        run.discard_disk()
        return 0
