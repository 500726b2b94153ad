"""The seams of the byte path's one composition (deploy.stream_image), on real loop devices.

The writer's context manager is the failure policy of a whole-disk write, and
``PartitionedDisk`` that of a partition image: an error inside either block
must leave a disk that does not boot, and say so.
"""

from __future__ import annotations

import os

import pytest

from agent.disk.partition_table import read_table
from agent.errors import DeploymentError, InvalidImage
from agent.imaging import formats, partition_deploy
from agent.imaging import partition_image as pi
from agent.imaging.deploy import stream_image
from agent.imaging.head import open_image
from agent.imaging.writer import DeviceWriter
from tests.conftest import requires_loop
from tests.functional.imaging.test_stream_image import (
    assert_unbootable,
    device_bytes,
    make_gpt_image,
    sha256,
    source,
)

pytestmark = requires_loop
MiB = 1 << 20


def closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def test_writer_wipes_what_it_wrote_when_the_block_raises(tmp_path, loop_disk):
    image = make_gpt_image(tmp_path)
    with pytest.raises(InvalidImage) as exc:
        with DeviceWriter(loop_disk, hold_head=False) as writer:
            writer.begin()
            writer.write(memoryview(image))
            writer.finish_body()
            # the whole image, table included, is on the disk at this point
            assert read_table(loop_disk).kind == "gpt"
            raise InvalidImage("stopped by the test")
    assert "will not boot" in exc.value.details
    assert_unbootable(loop_disk)
    # the GPT backup at the image's end is gone too, not only the disk's edges
    assert device_bytes(loop_disk, len(image))[len(image) - MiB:] == bytes(MiB)
    assert closed(writer.fd) and closed(writer.plain_fd)


def test_writer_leaves_a_normal_exit_to_the_finish_steps(tmp_path, loop_disk):
    image = make_gpt_image(tmp_path)
    with DeviceWriter(loop_disk) as writer:
        writer.begin()
        writer.write(memoryview(image))
        writer.finish_body()
    # no head written, nothing wiped: the body stands, the first MiB was never written
    on_disk = device_bytes(loop_disk, len(image))
    assert on_disk[:MiB] == bytes(MiB)
    assert on_disk[MiB:] == image[MiB:]
    assert closed(writer.fd)

    with DeviceWriter(loop_disk) as writer:
        writer.begin()
        writer.write(memoryview(image))
        writer.finish_body()
        writer.write_head()
    assert device_bytes(loop_disk, len(image)) == image
    assert read_table(loop_disk).kind == "gpt"


def test_stream_image_writes_a_head_that_was_already_read_and_inspected(
        tmp_path, image_server, loop_disk):
    image = make_gpt_image(tmp_path)
    image_server.files["image.raw"] = image
    opened = open_image(source(image_server))
    assert formats.inspect(opened.read_at).format == "gpt"
    report = stream_image(opened, loop_disk, sha256(image))
    assert device_bytes(loop_disk, len(image)) == image
    assert report.image_bytes == len(image)
    # the inspected head is the start of the stream, not a second download
    assert [e["path"] for e in image_server.log] == ["image.raw"]


def plan(**kw) -> partition_deploy.Plan:
    fields = dict(root_mb=32, swap_mb=0, ephemeral_mb=0, boot_mode="uefi", disk_label=None,
                  cpu_arch="x86_64", configdrive_size=0, ephemeral_format=None,
                  preserve_ephemeral=False)
    return partition_deploy.Plan(**{**fields, **kw})


def test_partitioned_disk_lifts_the_table_then_restores_it(make_loop):
    dev = make_loop(640 * MiB)
    with partition_deploy.PartitionedDisk(dev, plan(), None) as disk:
        assert disk.root == disk.layout[pi.ROOT]
        assert read_table(dev).kind is None       # off the disk while the root is written
        disk.restore_table()
        assert read_table(dev).kind == "gpt"
    assert read_table(dev).kind == "gpt"


def test_partitioned_disk_wipes_the_edges_when_the_block_raises(make_loop):
    dev = make_loop(640 * MiB)
    with pytest.raises(DeploymentError) as exc:
        with partition_deploy.PartitionedDisk(dev, plan(), None) as disk:
            disk.restore_table()
            assert read_table(dev).kind == "gpt"
            raise RuntimeError("stopped by the test")
    assert "RuntimeError" in exc.value.details and "will not boot" in exc.value.details
    assert isinstance(exc.value.__cause__, RuntimeError)
    assert_unbootable(dev)
