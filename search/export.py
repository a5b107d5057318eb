"""Exporting one candidate of a search run (SPEC 4: `genomec export`).

    OUT/config.json         the candidate's GenomeBertConfig (it carries the genome)
    OUT/model.safetensors   the weights it trained in the search (RUN/top/<index>.pt)
    OUT/tokenizer.json, ... the run's tokenizer (RUN/data/tokenizer)
    OUT/search.json         where it came from: run, candidate, fitness and loss, settings

or, with `genome_only`, just `OUT/genome.json` (a model genome `genomec check` reads).
Nothing is retrained: the weights are the ones the search scored, so the exported model
scores the fitness of its history record on the run's held-out blocks. Only the top-k
candidates' weights are kept by a run; any candidate's genome can be exported.

The export is written into a temporary folder beside OUT and renamed into place: an
interrupted export leaves no half-written OUT. An earlier export in OUT is replaced; any
other non-empty folder is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

from genomec.data import load_tokenizer
from genomec.genome import GenomeError, parse_genome
from genomec.models.training import current_umask

from .config import ConfigError, build_config
from .evaluate import GlueProxy, MLMProxy, candidate_overrides, model_config
from .rundir import HISTORY, SETTINGS, RunDirectory, RunError

PROVENANCE = "search.json"
GENOME_FILE = "genome.json"
EXPORTED_BY = "genomec export"  # marks an OUT this module wrote (and may replace)


class ExportError(ValueError):
    """The candidate cannot be exported as asked; one line says why."""


def export_candidate(run: str | Path, out: str | Path, candidate: str | int = "best", genome_only: bool = False) -> dict:
    """Write candidate `candidate` ("best" or a history index) of the search in `run` to
    `out`: a Hugging Face model directory, or with `genome_only` its genome file. Returns
    {index, candidate, duplicate_of, fitness, loss, out, files, genome_only}: `index` is
    the record whose weights (or genome) were written, `candidate` the one asked for, and
    `duplicate_of` is set when those differ (a duplicate's weights are its original's)."""
    run_dir, out = RunDirectory(run), Path(out)
    settings, evaluations = _read_settings(run_dir)
    try:
        records = run_dir.read_history(repair=False)  # the run may be live: never touch it
    except RunError as e:
        raise ExportError(str(e)) from None
    asked = _choose(records, candidate, run_dir.path)
    _check_out(out)

    if genome_only:  # the record's own genome (a duplicate's too), weights or not
        source = asked

        def write(folder: Path) -> None:
            (folder / GENOME_FILE).write_text(json.dumps(asked["genome"], indent=1) + "\n")
    else:
        source = _trained_source(records, asked, run_dir, settings.get("top_k", "k"))
        config = _search_config(settings, evaluations, run_dir.path)
        model, tokenizer = _load_candidate(run_dir, source, config)
        provenance = _provenance(run_dir.path, asked, source, settings, evaluations)

        def write(folder: Path) -> None:
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            (folder / PROVENANCE).write_text(json.dumps(provenance, indent=1, sort_keys=True) + "\n")

    files = _write_in_place(out, write)
    return {
        "index": source["index"], "candidate": asked["index"],
        "duplicate_of": asked["duplicate_of"] if source is not asked else None,
        "fitness": source["fitness"], "loss": source["loss"], "out": str(out), "files": files,
        "genome_only": genome_only,
    }


# -- reading the run ----------------------------------------------------------------------------


def _read_settings(run_dir: RunDirectory) -> tuple[dict, int]:
    path = run_dir.path
    if not path.is_dir():
        raise ExportError(f"{path}: no such run directory" if not path.exists() else f"{path}: not a run directory")
    if not (path / SETTINGS).is_file() or not (path / HISTORY).is_file():
        missing = SETTINGS if not (path / SETTINGS).is_file() else HISTORY
        raise ExportError(f"{path}: not a search run directory (no {missing})")
    try:
        saved = json.loads((path / SETTINGS).read_text())
        return saved["settings"], saved["evaluations"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise ExportError(f"{path / SETTINGS}: corrupt; not a search run's settings") from None


def _search_config(settings: dict, evaluations: int, path: Path):
    try:
        return build_config("tiny", {k: v for k, v in settings.items() if k != "processes"} | {"evaluations": evaluations},
                            str(path / SETTINGS))
    except ConfigError as e:
        raise ExportError(str(e)) from None


def _choose(records: list[dict], candidate: str | int, path: Path) -> dict:
    """The record asked for: "best" (highest fitness among `ok`, lowest index of ties,
    as best.json), or an index of the history."""
    if candidate == "best":
        scored = [r for r in records if r["status"] == "ok"]
        if not scored:
            raise ExportError(f"{path}: no candidate has been trained yet, so there is no best")
        return max(scored, key=lambda r: (r["fitness"], -r["index"]))
    index = candidate
    if isinstance(candidate, str):
        try:
            index = int(candidate)
        except ValueError:
            raise ExportError(f"candidate must be 'best' or an index of the history, got {candidate!r}") from None
    if isinstance(index, bool) or not isinstance(index, int):
        raise ExportError(f"candidate must be 'best' or an index of the history, got {candidate!r}")
    if not 0 <= index < len(records):
        span = f"0 to {len(records) - 1}" if records else "none yet"
        raise ExportError(f"candidate {index}: out of range ({path} has {len(records)} evaluations: {span})")
    return records[index]


def _trained_source(records: list[dict], asked: dict, run_dir: RunDirectory, top_k) -> dict:
    """The record whose trained weights stand for `asked`: itself, or for a duplicate
    (never trained) the candidate it duplicates. Refuses one without kept weights."""
    index = asked["index"]
    if asked["status"] in ("rejected", "failed"):
        what = "was rejected" if asked["status"] == "rejected" else "failed"
        raise ExportError(f"candidate {index} {what} ({asked.get('reason')}), so it has no trained weights; "
                          f"--genome-only exports its genome")
    source = records[asked["duplicate_of"]] if asked["status"] == "duplicate" else asked
    if not (run_dir.top_dir / f"{source['index']}.pt").is_file():
        kept = _kept_indices(run_dir)
        whose = f"candidate {index}" + (f" (a duplicate of {source['index']})" if source is not asked else "")
        listing = ", ".join(map(str, kept)) if kept else "none yet"
        raise ExportError(f"{whose}: weights not kept; the run keeps the weights of its top {top_k}: {listing} "
                          f"(--genome-only exports any candidate's genome)")
    return source


def _kept_indices(run_dir: RunDirectory) -> list[int]:
    return sorted(int(p.stem) for p in run_dir.top_dir.glob("*.pt") if p.stem.isdigit())


def _load_candidate(run_dir: RunDirectory, record: dict, config):
    """The trained candidate of `record` (its kept weights in the model the search built)
    and the run's tokenizer."""
    tokenizer_dir = run_dir.data_dir / "tokenizer"
    if not tokenizer_dir.is_dir():
        raise ExportError(f"{run_dir.path}: the run has no tokenizer ({tokenizer_dir} is missing)")
    tokenizer = load_tokenizer(tokenizer_dir)
    proxy = SimpleNamespace(config_overrides=candidate_overrides(config, tokenizer))
    model_class = (GlueProxy if config.proxy == "glue" else MLMProxy).model_class
    try:
        model = model_class(model_config(parse_genome(record["genome"]), config, proxy))
    except GenomeError as e:
        raise ExportError(f"candidate {record['index']}: its genome does not build ({e.lines()[0]})") from None
    weights_file = run_dir.top_dir / f"{record['index']}.pt"
    try:
        weights = torch.load(weights_file, map_location="cpu", weights_only=True)
    except FileNotFoundError:  # a live run dropped it from its top-k meanwhile
        raise ExportError(f"candidate {record['index']}: its weights left the run's top {config.top_k} while "
                          f"exporting; the run keeps: {', '.join(map(str, _kept_indices(run_dir)))}") from None
    except Exception as e:
        raise ExportError(f"{weights_file}: unreadable weights ({type(e).__name__})") from None
    _check_tied(model, weights, weights_file)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise ExportError(f"{weights_file}: the weights do not fit candidate {record['index']}'s model "
                          f"({str(e).splitlines()[0]})") from None
    return model.eval(), tokenizer


def _check_tied(model, weights: dict, weights_file: Path) -> None:
    """A tied decoder holds one tensor under two names: kept weights that differ there
    would load as whichever name comes last, so refuse them."""
    names: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
    for first, *others in names.values():
        for other in others:
            if first in weights and other in weights and not torch.equal(weights[first], weights[other]):
                raise ExportError(f"{weights_file}: {first} and {other} are tied in the model but differ in the weights")


def _provenance(path: Path, asked: dict, source: dict, settings: dict, evaluations: int) -> dict:
    provenance = {
        "exported_by": EXPORTED_BY, "run": str(path.resolve()), "candidate": asked["index"], "index": source["index"],
        "duplicate_of": None, "status": source["status"], "fitness": source["fitness"], "loss": source["loss"],
        "params": source.get("params"), "hash": source.get("hash"), "settings": settings, "evaluations": evaluations,
    }
    if source is not asked:
        provenance["duplicate_of"] = source["index"]
        provenance["note"] = (f"candidate {asked['index']} is a duplicate of candidate {source['index']} "
                              f"({asked.get('reason')}); the weights and genome are candidate {source['index']}'s")
    return provenance


# -- writing OUT ------------------------------------------------------------------------------------


def _is_earlier_export(out: Path) -> bool:
    entries = {p.name for p in out.iterdir()}
    if entries == {GENOME_FILE}:  # a genome-only export
        return True
    try:
        return json.loads((out / PROVENANCE).read_text()).get("exported_by") == EXPORTED_BY
    except (OSError, ValueError, AttributeError):
        return False


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"-o {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not _is_earlier_export(out):
        raise ExportError(f"-o {out}: the folder is not empty and holds no export; choose another -o")


def _write_in_place(out: Path, write) -> list[str]:
    """`write(folder)` into a temporary folder beside `out`, then renamed to `out`
    (replacing an empty folder or an earlier export). Returns the files written."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".export", dir=out.parent))
    except OSError as e:
        raise ExportError(f"-o {out}: cannot create the folder ({e.strerror or e})") from None
    old = None
    try:
        write(staging)
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        for name in files:  # what the umask gives (mkdtemp and some writers make them private)
            os.chmod(staging / name, 0o666 & ~current_umask())
        os.chmod(staging, 0o777 & ~current_umask())
        if out.is_dir() and any(out.iterdir()):  # an earlier export: moved aside, dropped after
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return files

