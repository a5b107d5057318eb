"""The static kernel benchmark: every kernel of SPEC 7's suite, forward and backward, at bf16
and head dims 64 and 128, compiled for sm_90 and read from its SASS, beside a
FlashAttention-2 reference compiled in the same run (`genomec/runtime/kernel_static.py`).
It needs no GPU. Results go to benchmarks/results/cpu/ by default.

    python benchmarks/kernel_static.py [--out DIR] [GENOME ...] [--head-dims D ...] [--dtypes T ...]
        [--passes forward backward] [--reference-tiles same best] [--json]

Same as `genomec bench --static -o DIR`; writes kernel_static.json and kernel_static.md.
"""

import sys
from pathlib import Path

from genomec.cli import main

RESULTS = Path(__file__).resolve().parent / "results" / "cpu"

if __name__ == "__main__":
    args = sys.argv[1:]
    args = ["-o" if a == "--out" else a for a in args]
    if "-o" not in args and "--output" not in args:
        args += ["-o", str(RESULTS)]
    sys.exit(main(["bench", "--static", *args]))
