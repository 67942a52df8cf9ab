"""`python -m sysdream.daemon`: the `sysdream` command (daemon/commands/cli.py)."""

from sysdream.daemon.commands.cli import main

raise SystemExit(main())
