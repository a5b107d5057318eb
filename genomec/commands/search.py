"""`genomec search [CONFIG] [--preset P] --out RUN ...`: OP-NAS over hybrid backbones with a
BIWS super-net (SPEC 4 and 5). A thin wrapper over `genomec.search.engine.Search`.
"""

from __future__ import annotations

import json
import sys

from genomec.errors import UsageError

SUMMARY_KEYS = ("evaluations", "trained", "duplicates", "rejected", "failed", "best_index", "best_fitness", "wall_seconds")


def register(sub) -> None:
    p = sub.add_parser("search", help="evolve hybrid attention/convolution backbones (OP-NAS with a BIWS super-net)")
    p.add_argument("config", nargs="?", metavar="CONFIG", help="TOML or JSON file whose keys override the preset's")
    p.add_argument("--preset", default="tiny", help="tiny (2-core CPU), small (one GPU) or base (several GPUs)")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory (started again, the run continues)")
    p.add_argument("--strategy", choices=("op", "re", "random"), help="op: OP-NAS; re: regularised evolution; random")
    p.add_argument("--seed", type=int)
    p.add_argument("--evaluations", type=int, metavar="E", help="the budget (a finished run continues to a larger one)")
    p.add_argument("--no-sharing", action="store_true", help="train every candidate from scratch (no super-net)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line (the last line)")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks on failure")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    from genomec.data import DataError
    from genomec.search.config import ConfigError, build_config, read_config_file
    from genomec.search.rundir import RunError

    flags = {"strategy": args.strategy, "seed": args.seed, "evaluations": args.evaluations}
    flags = {k: v for k, v in flags.items() if v is not None} | ({"sharing": False} if args.no_sharing else {})
    try:
        from_file = read_config_file(args.config) if args.config else {}
        build_config(args.preset, from_file, args.config or "config")  # a bad key is named with its file
        config = build_config(args.preset, {**from_file, **flags}, "command line")
    except ConfigError as e:
        raise UsageError(str(e)) from None

    from genomec.commands.train import _quiet_libraries
    from genomec.search.distributed import World
    from genomec.search.engine import Search

    _quiet_libraries("search")
    world = World.from_environment()  # under torchrun: this process's rank; else a world of one
    try:
        summary = Search(config, args.out, progress=not args.no_progress, world=world).run()
    except (ConfigError, DataError, RunError) as e:
        raise UsageError(str(e)) from None
    except KeyboardInterrupt:
        print("genomec search: stopped; run the same command again to continue", file=sys.stderr)
        raise
    finally:
        world.close()
    if not world.is_main:
        return 0  # rank 0 reports
    if args.json:
        print(json.dumps({k: summary[k] for k in (*SUMMARY_KEYS, "processes", "time_split", "out")}))
    else:
        for key in SUMMARY_KEYS:
            print(f"{key}: {summary[key]}")
        print(f"wrote {summary['out']}")
    return 0
