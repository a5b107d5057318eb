"""`genomec ops`: the operations of the genome language with their definitions."""

from __future__ import annotations

import json

from genomec.genome.ops import OPS


def register(sub) -> None:
    p = sub.add_parser("ops", help="list the operations with their definitions")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=handle)


def describe() -> list[dict]:
    return [
        {
            "name": op.name,
            "arity": op.arity,
            "definition": op.definition,
            "traits": [t for t in ("elementwise", "commutative", "linear", "odd") if getattr(op, t)],
            "paper_group": op.paper_group,
        }
        for op in OPS.values()
    ]


def handle(args) -> int:
    rows = describe()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        group = "paper" if row["paper_group"] else "extra"
        traits = f"  [{', '.join(row['traits'])}]" if row["traits"] else ""
        print(f"{row['name']:<11} {row['arity']}  {group:<5}  {row['definition']}{traits}")
    return 0
