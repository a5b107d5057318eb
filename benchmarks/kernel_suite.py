"""The kernel suite of SPEC 7, forward and forward+backward; results go to benchmarks/results/ by default.

    python benchmarks/kernel_suite.py [-o DIR] [GENOME ...]

Same as `genomec bench`. With a CUDA GPU it times ours against eager, torch.compile,
FlexAttention and SDPA; without one it reports front-end time, generated source size and
ahead-of-time compile resources for sm_90 instead, and says so.
"""

import sys
from pathlib import Path

from genomec.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "-o" not in args and "--output" not in args:
        args += ["-o", str(Path(__file__).resolve().parent / "results")]
    sys.exit(main(["bench", *args]))
