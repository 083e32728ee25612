"""``autopilot``: the command line. ``root`` builds the group from the command modules."""

from controlplane.cli.root import cli, main

__all__ = ["cli", "main"]
