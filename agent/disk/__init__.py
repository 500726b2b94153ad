"""Block devices, below both imaging/ and hardware/.

- ``blockdev``: sizes, sector sizes, exclusive opens, the checks before a whole-disk write,
  and ``zero_edges``, the one routine that wipes the tables at both ends of a disk
- ``partition_table``: our own reader of MBR and GPT tables (no tool, no kernel parser needed)
- ``partition_edit``: creating and changing partitions (sfdisk) on a disk
- ``reread``: making the kernel's partitions match the on-disk table (BLKRRPART, then BLKPG)
- ``usage``: who uses a disk (root filesystem, mounts, swap, md/dm holders, open
  descriptors), read once, under one exemption policy for every caller
- ``sysfs``: small readers of /sys and /proc that take a root, so tests can feed a tree
"""
