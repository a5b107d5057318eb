"""Bad command-line input (SPEC 8): exit 2 and one clear line naming the offending file,
key, option, array or path; never a traceback, never a hang, nothing written."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import GENOMES
from genomec.cli import main

STANDARD = GENOMES / "standard-attention.json"
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # root writes anywhere: no permission test


def run_cli(*args, env=None, timeout=300):
    """`python -m genomec` in a fresh process: what a user sees."""
    return subprocess.run([sys.executable, "-m", "genomec", *map(str, args)], capture_output=True, text=True,
                          env=None if env is None else {**os.environ, **env}, timeout=timeout)


def error_lines(result) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()


# -- genome files ------------------------------------------------------------------------------


def test_check_refuses_a_50_mb_expression_at_once(tmp_path):
    huge = tmp_path / "huge.json"
    huge.write_text('{"expr": "' + "neg(" * 5_000_000 + "q" + ")" * 5_000_000 + '"}')
    result = run_cli("check", huge, timeout=60)  # it used to hang
    assert result.returncode == 2
    assert error_lines(result) == [f"{huge}: {huge.stat().st_size:,} bytes, over the limit of 4 MiB for a genome file"]


def test_check_refuses_dev_zero_and_a_5000_digit_number(tmp_path):
    digits = tmp_path / "digits.json"
    digits.write_text('{"layers": [{"type": "conv", "kernel_size": ' + "9" * 5000 + "}]}")
    result = run_cli("check", "/dev/zero", digits, timeout=60)
    assert result.returncode == 2
    assert error_lines(result) == [
        "/dev/zero: more than 4 MiB, over the limit of 4 MiB for a genome file",
        f"{digits}: the number 999999999999... has 5000 digits, more than any genome value needs",
    ]


@pytest.mark.parametrize(
    "genome, message",
    [
        ({"layers": [{"type": "conv", "kernel_size": 3}] * 10_000}, "'layers' has 10000 layers, over the limit of 256"),
        ({"config": {"hidden_size": 2**40}, "layers": [{"type": "conv", "kernel_size": 3}]},
         "config: 'hidden_size' must be at most 16384, got 1099511627776"),
    ],
)
def test_check_refuses_model_sizes_over_the_bounds(tmp_path, capsys, genome, message):
    path = tmp_path / "model.json"
    path.write_text(json.dumps(genome))
    assert main(["check", str(path)]) == 2
    assert f"{path}: {message}" in capsys.readouterr().err.splitlines()


def test_check_prints_ten_of_a_thousand_problems_and_counts_the_rest(tmp_path, capsys):
    path = tmp_path / "many.json"
    nodes = [{"id": f"n{i}", "op": "nope", "args": ["q"]} for i in range(1000)]
    path.write_text(json.dumps({"nodes": nodes, "output": "n0"}))
    assert main(["check", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 11 and lines[-1] == f"{path}: ... and 990 more problem(s)"
    assert main(["check", "--json", str(path)]) == 2
    [report] = json.loads(capsys.readouterr().out)
    assert len(report["problems"]) == 1000  # machines get every one


# -- genomec run ----------------------------------------------------------------------------


def write_inputs(path, shape=(1, 2, 5, 4), **override):
    rng = np.random.default_rng(0)
    arrays = {name: rng.standard_normal(shape).astype(np.float32) for name in ("q", "k", "v", "grad_out")}
    arrays.update(override)
    np.savez(path, **arrays)
    return arrays


@pytest.mark.parametrize("name", ["q", "k", "v", "grad_out"])
@pytest.mark.parametrize("value, counts", [(np.nan, "1 NaN and 0 infinite"), (-np.inf, "0 NaN and 1 infinite")])
def test_run_refuses_non_finite_inputs_naming_the_array(tmp_path, capsys, name, value, counts):
    arrays = write_inputs(tmp_path / "in.npz")
    bad = arrays[name].copy()
    bad[0, 1, 3, 2] = value
    write_inputs(tmp_path / "in.npz", **{name: bad})
    out = tmp_path / "out.npz"
    assert main(["run", str(STANDARD), "--inputs", str(tmp_path / "in.npz"), "--out", str(out), "--grad"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"genomec run: {tmp_path / 'in.npz'}: '{name}' holds {counts} value(s), the first at [0, 1, 3, 2]; inputs must be finite"
    assert not out.exists()


def test_run_refuses_an_npz_member_that_is_not_an_array(tmp_path, capsys):
    import pickle
    import zipfile

    path = tmp_path / "in.npz"
    write_inputs(path)
    with zipfile.ZipFile(path, "a") as archive:  # a pickled object beside the arrays, without the .npy format
        archive.writestr("mask", pickle.dumps({"not": "an array"}))
    assert main(["run", str(STANDARD), "--inputs", str(path), "--out", str(tmp_path / "o.npz")]) == 2
    assert capsys.readouterr().err.strip() == f"genomec run: {path}: member 'mask' is not a NumPy array (write the file with np.savez)"


def test_run_on_the_interpreter_prints_no_numpy_warnings_on_large_values(tmp_path):
    write_inputs(tmp_path / "in.npz", **{n: np.full((1, 2, 5, 4), 3e38, dtype=np.float32) for n in ("q", "k", "v")})
    result = run_cli("run", STANDARD, "--inputs", tmp_path / "in.npz", "--out", tmp_path / "o.npz", "--backend", "triton",
                     env={"TRITON_INTERPRET": "1", "GENOMEC_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    assert "RuntimeWarning" not in result.stderr and "interpreter.py" not in result.stderr
    assert "genomec run: 'out' holds 40 of 40 values that are NaN or infinite: the graph overflowed float32" in result.stderr


# -- genomec compile ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["sm_20", "sm_50"])
def test_compile_refuses_an_arch_triton_cannot_target(tmp_path, capsys, arch):
    assert main(["compile", str(STANDARD), "-o", str(tmp_path / "out"), "--arch", arch]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"genomec compile: --arch {arch}: the installed Triton does not compile for it; supported: sm_75, sm_80, ")
    assert "sm_90" in line and not (tmp_path / "out").exists()


def test_supported_archs_come_from_tritons_ptxas():
    from genomec.codegen.aot import parse_arch, supported_archs

    assert {75, 80, 86, 89, 90}.issubset(supported_archs()) and min(supported_archs()) == 75
    assert parse_arch("sm_80") == 80 and parse_arch("sm_90a") == 90


def compile_out_problems(tmp_path):
    (tmp_path / "a-file").write_text("x")
    return [
        (tmp_path / "a-file", "exists and is not a folder"),
        (tmp_path / "a-file" / "out", f"{tmp_path / 'a-file'} is a file, not a folder"),
        (tmp_path / "a-file" / "deeper" / "out", f"{tmp_path / 'a-file'} is a file, not a folder"),
    ]


def test_compile_refuses_a_bad_output_folder_before_compiling(tmp_path, capsys):
    for out, message in compile_out_problems(tmp_path):
        assert main(["compile", str(GENOMES / "autobert-zero.json"), "-o", str(out)]) == 2
        assert capsys.readouterr().err.strip() == f"genomec compile: -o {out}: {message}"
    assert (tmp_path / "a-file").read_text() == "x"


def test_compile_refuses_read_only_and_forbidden_places(tmp_path, capsys, monkeypatch):
    import genomec.fileio as fileio

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(fileio.os, "statvfs", lambda path: ReadOnly())
    assert main(["compile", str(STANDARD), "-o", str(tmp_path / "new" / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"genomec compile: -o {tmp_path / 'new' / 'out'}: {tmp_path} is on a read-only file system"
    monkeypatch.undo()
    monkeypatch.setattr(fileio.os, "access", lambda path, mode: False)
    assert main(["compile", str(STANDARD), "-o", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"genomec compile: -o {tmp_path}: no permission to write in {tmp_path}"


@pytest.mark.skipif(AS_ROOT, reason="root may write in a folder without write permission")
def test_compile_refuses_a_folder_without_write_permission(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(["compile", str(STANDARD), "-o", str(locked / "out")]) == 2
    assert f"no permission to write in {locked}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [(["--lengths", "0"], "--lengths 0: expected 1..1048576"), (["--head-dims", "512"], "--head-dims 512: expected 1..256")],
)
def test_bench_refuses_bad_sizes_and_output_folders(tmp_path, capsys, argv, message):
    assert main(["bench", str(STANDARD), "-o", str(tmp_path / "out"), *argv]) == 2
    assert capsys.readouterr().err.strip() == f"genomec bench: {message}"
    (tmp_path / "a-file").write_text("x")
    assert main(["bench", str(STANDARD), "-o", str(tmp_path / "a-file")]) == 2
    assert capsys.readouterr().err.strip() == f"genomec bench: -o {tmp_path / 'a-file'}: exists and is not a folder"


# -- files genomec writes get the umask's permissions ------------------------------------------


def test_compile_and_run_outputs_get_the_umask_permissions(tmp_path):
    write_inputs(tmp_path / "in.npz")
    previous = os.umask(0o022)
    try:
        assert main(["compile", str(STANDARD), "-o", str(tmp_path / "out")]) == 0
        assert main(["run", str(STANDARD), "--inputs", str(tmp_path / "in.npz"), "--out", str(tmp_path / "o.npz")]) == 0
    finally:
        os.umask(previous)
    written = sorted((tmp_path / "out").iterdir()) + [tmp_path / "o.npz"]
    assert len(written) == 3  # the module, manifest.json, o.npz
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: "0o644" for p in written}


def test_one_light_atomic_write_helper():
    from genomec import fileio
    from genomec.models import training

    assert training.write_atomic is fileio.write_atomic and training.current_umask is fileio.current_umask
    code = "import sys, genomec.fileio; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# -- the kernel cache ---------------------------------------------------------------------------


def _compiled():
    from genomec.genome import load_genome
    from genomec.ir import lower

    return lower(load_genome(STANDARD))


@pytest.mark.parametrize("where", ["a-file", "a-file/below"])
def test_an_unusable_cache_folder_falls_back_to_a_temporary_one_with_one_warning(tmp_path, capsys, where):
    from genomec.runtime import KernelCache

    (tmp_path / "a-file").write_text("not a folder")
    cache = KernelCache(tmp_path / where)
    entry = cache.get_or_build(_compiled())
    assert entry.module_path.is_file() and tmp_path not in entry.path.parents
    again = KernelCache(tmp_path / where).get_or_build(_compiled())  # a second cache in the process
    assert again.path.parent == entry.path.parent
    [warning] = capsys.readouterr().err.strip().splitlines()
    reason = "exists and is not a folder" if where == "a-file" else f"{tmp_path / 'a-file'} is a file, not a folder"
    assert warning.startswith(f"genomec: warning: kernel cache {tmp_path / where} is not usable ({reason}); caching kernels in ")
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_run_with_an_unusable_cache_folder_still_runs(tmp_path):
    write_inputs(tmp_path / "in.npz")
    (tmp_path / "cache").write_text("a file")
    result = run_cli("run", STANDARD, "--inputs", tmp_path / "in.npz", "--out", tmp_path / "o.npz", "--backend", "triton",
                     env={"TRITON_INTERPRET": "1", "GENOMEC_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("genomec: warning: kernel cache") == 1


# -- the command line itself ------------------------------------------------------------------


def test_commands_import_usage_error_without_the_cli():
    code = (
        "import sys; import genomec.commands.train, genomec.commands.compile, genomec.commands.run; "
        "assert 'genomec.cli' not in sys.modules; "
        "import genomec.cli, genomec.errors; assert genomec.cli.UsageError is genomec.errors.UsageError"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
