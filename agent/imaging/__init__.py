"""Bytes from a URL to the disk, and what happens to the disk afterwards.

- ``deploy``: the composition: which disk, checksum, inspection, then the byte path written out
  (stream body → [stage → qemu-img] → head → verify) with its failure policy, then the config drive
- ``partition_deploy``: the partition-image order (plan, layout, table held off the disk)
- ``steps``: ``write_image`` as a deploy/service step, and the request rules standby shares
- ``image_info``: validation of ``image_info`` before any I/O; ``checksum``: the expected digest
- ``source`` (HTTP with resume/restart), ``httpget`` (small capped GETs), ``head`` (the peeked
  first bytes), ``decompress``, ``stream`` (the stage chain), ``plumbing`` (buffers, threads),
  ``writer`` (O_DIRECT writes, head last, wipe on error), ``verify`` (read-back)
- ``formats`` and ``format_headers``: what an image is; ``nonraw`` and ``qemu_img``: converting one
- ``configdrive`` and ``configdrive_build``: the config drive; ``partition_image``: the layout of
  a partition image; ``written``: what "already written" means; ``bootloader/``: install_bootloader
"""
