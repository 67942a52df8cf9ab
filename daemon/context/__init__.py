"""Who a process is: the context an alert carries.

    processes.py  the process table, from the kernel's context records
    procfs.py     what /proc says of the processes the records did not describe
    cgroups.py    cgroup ids to paths, containers and systemd units
    printable.py  names and arguments made safe for people to read
    identity.py   host, boot and process identity: entity_id, wall-clock start, exe sha256

Imports nothing else of the daemon's but config.
"""
