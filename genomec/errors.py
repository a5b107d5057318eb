"""The error a command raises for bad input: `genomec.cli.main` prints it as one line
and exits 2. Its own small module, so the commands need not import the CLI that imports them."""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input to a command (exit 2)."""
