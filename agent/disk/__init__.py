"""Block devices, below both imaging/ and hardware/.

- ``blockdev``: sizes, sector sizes, exclusive opens, and the checks before a whole-disk write
- ``partition_table``: our own reader of MBR and GPT tables (no tool, no kernel parser needed)
- ``partition_edit``: creating and changing partitions (sgdisk/sfdisk) on a disk
- ``reread``: making the kernel's partitions match the on-disk table (BLKRRPART, then BLKPG)
- ``sysfs``: small readers of /sys and /proc that take a root, so tests can feed a tree
"""
