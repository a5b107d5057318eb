"""`genomec run FILE --inputs IN.npz --out OUT.npz [--grad]`: execute an attention graph."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np

from genomec.api import read_run_inputs, run_forward, run_reference, select_graph, write_npz_atomic
from genomec.errors import UsageError
from genomec.fileio import output_file_problem
from genomec.genome import load_genome
from genomec.ir import lower


def run_triton(compiled, arrays, grad):
    """Fused Triton kernels, forward and (with grad) backward, on Triton's interpreter
    without a GPU. What runs on the reference executor instead is said on stderr."""
    from genomec.runtime import load

    module = load(compiled)
    if not module.fused:
        note(f"graph {compiled.hash} is outside the fused class ({module.reason}); ran it on the reference executor")
    elif module.interpret:
        note("no CUDA GPU; running the generated kernels on Triton's interpreter")
    if grad and module.fused and not module.backward_fused:
        note(f"the backward of graph {compiled.hash} is outside the fused backward class "
             f"({module.backward_reason}); differentiated it through the reference executor")
    # Triton's interpreter computes with NumPy, which warns on each overflow; an overflow
    # is reported once, on the outputs (see `note_non_finite`).
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return run_forward(module, arrays, grad)


def note(message: str) -> None:
    print(f"genomec run: {message}", file=sys.stderr)


def note_non_finite(result: dict[str, np.ndarray]) -> None:
    """Finite inputs can still overflow float32 inside a graph: say so, once per array."""
    for name, a in result.items():
        bad = int(np.count_nonzero(~np.isfinite(a)))
        if bad:
            note(f"'{name}' holds {bad} of {a.size} values that are NaN or infinite: the graph overflowed float32 on these inputs")


# backend name -> fn(compiled, arrays, grad) -> {"out", and with grad "dq", "dk", "dv"}
BACKENDS = {"reference": run_reference, "triton": run_triton}


def register(sub) -> None:
    p = sub.add_parser("run", help="execute an attention graph on arrays from an .npz file")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--inputs", required=True, metavar="IN.npz", help="q, k, v [B,H,N,d] float32; optional mask [B,N] bool, grad_out")
    p.add_argument("--out", required=True, metavar="OUT.npz")
    p.add_argument("--backend", choices=list(BACKENDS), default="reference")
    p.add_argument("--grad", action="store_true", help="also write dq, dk, dv for grad_out")
    p.add_argument("--layer", type=int, help="for a model genome: which (attention) layer to run")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    problem = output_file_problem(args.out)
    if problem:
        raise UsageError(f"--out {args.out}: {problem}")
    graph = select_graph(load_genome(args.file), args.layer)
    arrays = read_run_inputs(args.inputs, graph, args.grad)
    compiled = lower(graph)
    result = BACKENDS[args.backend](compiled, arrays, args.grad)
    note_non_finite(result)
    write_npz_atomic(args.out, **result)
    summary = {"hash": compiled.hash, "backend": args.backend, "out": args.out, "arrays": {k: list(v.shape) for k, v in result.items()}}
    print(json.dumps(summary) if args.json else f"wrote {', '.join(result)} to {args.out} ({args.backend} backend)")
    return 0
