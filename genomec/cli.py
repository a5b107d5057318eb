"""`genomec` command line. Exit status: 0 success, 1 runtime failure, 2 bad input.

Each subcommand lives in `genomec/commands/<name>.py` with `register(subparsers)`, which
adds its parser and sets `handler(args) -> int`. To add a command, add its module to
COMMANDS. Handlers raise `UsageError` (from `genomec.errors`; or a GenomeError, ArrayError,
InputError) for bad input; `main` turns those into one line per problem and exit 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from genomec.commands import bench, check, compile, export, ops, report, run, search, show, train
from genomec.errors import UsageError  # noqa: F401  (also importable as genomec.cli.UsageError)

COMMANDS = [check, show, compile, run, bench, ops, train, search, export, report]


def version() -> str:
    """The installed distribution's version; the package's own `__version__` in a checkout
    that is not installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("genomec")
    except PackageNotFoundError:
        import genomec

        return getattr(genomec, "__version__", "unknown")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genomec",
        description="Compile attention genomes to fused Triton kernels, and search them.",
    )
    parser.add_argument("--version", action="version", version=f"genomec {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.register(sub)
    return parser


def _bad_input_types() -> tuple[type, ...]:
    from genomec.api import ArrayError
    from genomec.genome import GenomeError
    from genomec.ir import InputError

    return (UsageError, GenomeError, ArrayError, InputError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    try:
        return int(args.handler(args) or 0)
    except _bad_input_types() as e:
        lines = e.lines() if hasattr(e, "lines") else [str(e)]
        for line in lines:
            print(f"genomec {args.command}: {line}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("genomec: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a runtime failure: say what, no traceback unless asked
        if getattr(args, "verbose", False):
            raise
        print(f"genomec {args.command}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
