"""The IR: networkx graphs of frozen nodes, rewrite passes, hashing, the reference executor."""

from .graph import IR, IRBuilder, IRError, Node, build_ir, format_ir, index_space, rebuild, verify
from .passes import PIPELINE, SIMPLIFY_RULES, Compiled, PassReport, canonicalize, cse, dce, lower, run_passes, simplify, structural_hash
from .reference import InputError, execute

__all__ = [
    "IR", "IRBuilder", "IRError", "Node", "build_ir", "format_ir", "index_space", "rebuild", "verify", "PIPELINE",
    "SIMPLIFY_RULES", "Compiled", "PassReport", "canonicalize", "cse", "dce", "lower", "run_passes", "simplify",
    "structural_hash", "InputError", "execute",
]
