"""The library functions behind the CLI: what `genomec check`, `show` and `run` do."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genomec.fileio import write_atomic
from genomec.genome import AttentionGenome, AttentionLayer, Genome, GenomeError, load_genome
from genomec.ir import Compiled, PassReport, lower


@dataclass
class GraphEntry:
    """One distinct attention graph of a genome (by structural hash)."""

    genome: AttentionGenome
    compiled: Compiled
    layers: list[int] = field(default_factory=list)  # model layer indices using it; [] for a bare graph

    @property
    def title(self) -> str:
        if not self.layers:
            return self.genome.name or "attention graph"
        return "layer " + ", ".join(str(i) for i in self.layers)


def distinct_graphs(genome: Genome, report: PassReport | None = None) -> list[GraphEntry]:
    """The attention graphs of a genome, each distinct one (by structural hash) once."""
    if isinstance(genome, AttentionGenome):
        return [GraphEntry(genome, lower(genome, report))]
    entries: dict[str, GraphEntry] = {}
    for index, layer in enumerate(genome.layers):
        if isinstance(layer, AttentionLayer):
            compiled = lower(layer.graph, report)
            entry = entries.setdefault(compiled.hash, GraphEntry(layer.graph, compiled))
            entry.layers.append(index)
    return list(entries.values())


def select_graph(genome: Genome, layer: int | None) -> AttentionGenome:
    """The attention graph to execute: the genome itself, or a model's layer `layer`."""
    if isinstance(genome, AttentionGenome):
        if layer is not None:
            raise GenomeError("--layer applies to model genomes; this file is one attention graph")
        return genome
    attention = [i for i, l in enumerate(genome.layers) if isinstance(l, AttentionLayer)]
    if layer is None:
        raise GenomeError(f"this is a model genome; choose an attention layer with --layer (one of {attention})")
    if layer not in attention:
        raise GenomeError(f"--layer {layer} is not an attention layer (attention layers: {attention})")
    return genome.layers[layer].graph


# -- npz input and output (`genomec run`) ---------------------------------------------------


class ArrayError(ValueError):
    """Arrays in an npz file do not fit the contract of `genomec run`."""


def read_run_inputs(path: str | Path, genome: AttentionGenome, grad: bool) -> dict[str, np.ndarray]:
    """Read and check q, k, v ([B, H, N, d] float32), mask ([B, N] bool) and grad_out."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise ArrayError(f"{path}: no such file") from None
    except Exception as e:  # zipfile.BadZipFile, ValueError (pickled objects), ...
        raise ArrayError(f"{path}: not a readable .npz file ({e})") from None
    known = {"q", "k", "v", "mask", "grad_out"}
    unknown = sorted(set(arrays) - known)
    if unknown:
        raise ArrayError(f"{path}: unknown array '{unknown[0]}' (expected q, k, v, mask, grad_out)")
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):  # a member stored without the .npy format (a pickle, raw bytes)
            raise ArrayError(f"{path}: member '{name}' is not a NumPy array (write the file with np.savez)")
    needed = [name for name in ("q", "k", "v") if name in genome.inputs]
    shape = None
    for name in ("q", "k", "v"):
        if name not in arrays:
            if name in needed:
                raise ArrayError(f"{path}: the graph reads '{name}', but the file has no array '{name}'")
            continue
        a = arrays[name]
        if a.dtype != np.float32:
            raise ArrayError(f"{path}: '{name}' must be float32, got {a.dtype}")
        if a.ndim != 4 or 0 in a.shape:
            raise ArrayError(f"{path}: '{name}' must be [B, H, N, d], got shape {list(a.shape)}")
        if shape is not None and a.shape != shape:
            raise ArrayError(f"{path}: '{name}' has shape {list(a.shape)}, but another input has {list(shape)}")
        _check_finite(path, name, a)
        shape = a.shape
    if shape is None:
        raise ArrayError(f"{path}: no input arrays (q, k, v)")
    if "mask" in arrays:
        m = arrays["mask"]
        if m.dtype != np.bool_ or m.shape != (shape[0], shape[2]):
            raise ArrayError(f"{path}: 'mask' must be bool [B, N] = {[shape[0], shape[2]]}, got {m.dtype} {list(m.shape)}")
    if grad:
        g = arrays.get("grad_out")
        if g is None:
            raise ArrayError(f"{path}: --grad needs an array 'grad_out' of shape {list(shape)}")
        if g.dtype != np.float32 or g.shape != shape:
            raise ArrayError(f"{path}: 'grad_out' must be float32 {list(shape)}, got {g.dtype} {list(g.shape)}")
        _check_finite(path, "grad_out", g)
    return arrays


def _check_finite(path, name: str, a: np.ndarray) -> None:
    """Inputs hold finite numbers: a NaN or an infinity would run through every kernel and
    come out as NaN, far from its cause."""
    bad = ~np.isfinite(a)
    if bad.any():
        nan = int(np.isnan(a).sum())
        first = [int(i) for i in np.unravel_index(int(np.argmax(bad)), a.shape)]
        raise ArrayError(
            f"{path}: '{name}' holds {nan} NaN and {int(bad.sum()) - nan} infinite value(s), the first at {first}; "
            "inputs must be finite"
        )


def write_npz_atomic(path: str | Path, **arrays: np.ndarray) -> None:
    """Write then rename, so a reader never sees half a file and a failure loses nothing."""
    write_atomic(path, lambda f: np.savez(f, **arrays))


def run_forward(forward, arrays: dict[str, np.ndarray], grad: bool = False) -> dict[str, np.ndarray]:
    """Run `forward(q, k, v, mask=...)` on npz arrays: {"out"} and, with grad, {"dq", "dk",
    "dv"} for `grad_out` (zeros for an input the graph does not read)."""
    import torch

    shape = next(arrays[n] for n in ("q", "k", "v") if n in arrays).shape
    tensors = {}
    for name in ("q", "k", "v"):
        t = torch.from_numpy(arrays[name]) if name in arrays else torch.zeros(shape)
        tensors[name] = t.clone().requires_grad_(grad)
    mask = torch.from_numpy(arrays["mask"]) if "mask" in arrays else None
    out = forward(tensors["q"], tensors["k"], tensors["v"], mask=mask)
    result = {"out": out.detach().numpy()}
    if grad:
        out.backward(torch.from_numpy(arrays["grad_out"]))
        for name in ("q", "k", "v"):
            g = tensors[name].grad
            result["d" + name] = (torch.zeros(shape) if g is None else g).numpy()
    return result


def run_reference(compiled: Compiled, arrays: dict[str, np.ndarray], grad: bool = False) -> dict[str, np.ndarray]:
    """`genomec run --backend reference`: the reference executor, torch autograd for grads."""
    from genomec.ir import execute

    return run_forward(lambda q, k, v, mask: execute(compiled.simplified, q, k, v, mask=mask), arrays, grad)
