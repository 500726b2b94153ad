"""Software RAID (Ironic's ``agent`` RAID interface), groundwork.

The first modules touch no disk: they turn a ``target_raid_config`` into a
plan and the plan into mdadm command lines, and read mdadm's answers back:

- ``config``: validate the ``logical_disks`` and pick each volume's member disks.
- ``layout``: the plan: holder partitions per member disk (1 MiB aligned,
  leaving the front of every member for the ESP or BIOS boot partition the
  later deploy adds) and one md array per logical disk.
- ``mdadm``: mdadm argument lists (create, assemble, stop, zero-superblock,
  detail, examine) and parsers for ``--detail``, ``--examine`` and /proc/mdstat.
- ``result``: the RAID configuration returned as the step result, which Ironic
  stores as the node's ``raid_config`` (it requires a non-empty result).

Then the parts that act:

- ``pool``: the usable disks, and the node's boot mode, disk label and arch.
- ``scan``: md superblocks read (and zeroed) straight from the disks.
- ``teardown``: delete_configuration, decided first, then carried out.
- ``apply``: create/apply_configuration, decided first, then carried out.
- ``steps``: the ``raid`` step dicts and bodies the generic manager offers.
"""
