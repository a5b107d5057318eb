import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]
GENOMES = ROOT / "genomes"
# The reference genomes beside the checkout; the zoo holds copies for a checkout without it.
SHARED_GENOMES = ROOT.parent / "shared" / "genomes"
if not SHARED_GENOMES.is_dir():
    SHARED_GENOMES = GENOMES

# CI runs derandomised (the same examples every run); locally hypothesis explores.
settings.register_profile("ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def zoo_files() -> list[Path]:
    return sorted(GENOMES.glob("*.json"))


def zoo_graphs() -> list:
    """(name, attention genome), one per distinct graph (structural hash) of the zoo."""
    from genomec.genome import attention_graphs, load_genome
    from genomec.ir import lower

    graphs = {}
    for path in zoo_files():
        for i, g in enumerate(attention_graphs(load_genome(path))):
            graphs.setdefault(lower(g).hash, (f"{path.stem}[{i}]", g))
    return list(graphs.values())


def random_problem(shape, dtype=None, seed=0, mask_rate=0.3):
    """Seeded q, k, v and an output cotangent of `shape` (fp32 unless `dtype`), and a key
    padding mask [B, N] with the first token of every sequence real."""
    import torch

    dtype = dtype or torch.float32
    g = torch.Generator().manual_seed(seed)
    q, k, v, grad_out = (torch.randn(shape, generator=g).to(dtype) for _ in range(4))
    mask = torch.rand(shape[0], shape[2], generator=g) > mask_rate
    mask[:, 0] = True
    return (q, k, v), grad_out, mask


def relative_error(ours, reference) -> float:
    """max |ours - reference| relative to max |reference| (float64 comparison)."""
    # A gradient that is 0 in exact arithmetic (a softmax over a single key) is compared
    # absolutely: the floor keeps rounding noise from reading as a relative error.
    return ((ours.double() - reference).abs().max() / reference.abs().max().clamp_min(1e-3)).item()
