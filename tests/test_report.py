"""`genomec report` (SPEC 4 and 5, Report): one self-contained HTML page of one or more
search runs, finished or still going, with every section; bad paths exit 2; the page
renders in a real browser."""

import base64
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from genomec.cli import main
from genomec.search.config import build_config
from genomec.search.engine import Search
from genomec.search.report import SECTIONS, write_report
from genomec.search.rundir import HISTORY, SETTINGS
from test_search import toy_settings, write_corpus

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTION_IDS = [sid for sid, _ in SECTIONS]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two toy searches: OP-NAS with seed 0 (10 evaluations), regularised evolution with
    seed 1 (6 evaluations)."""
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(root / "cache"))
        corpus = write_corpus(root / "corpus.txt")
        made = {}
        for strategy, seed, evaluations in (("op", 0, 10), ("re", 1, 6)):
            config = build_config("tiny", toy_settings(corpus, strategy=strategy, seed=seed, evaluations=evaluations))
            Search(config, root / strategy, progress=False, log=lambda m: None).run()
            made[strategy] = root / strategy
    return made


class Page(HTMLParser):
    """The section ids in order, and the src of every <img>."""

    def __init__(self, text: str):
        super().__init__()
        self.section_ids, self.images = [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.section_ids.append(attrs.get("id"))
        if tag == "img":
            self.images.append(attrs.get("src", ""))


def report(capsys, *args) -> tuple[int, str, str]:
    code = main(["report", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def copy_run(run: Path, to: Path) -> Path:
    """The settings and history of a run only: what a run in its first evaluations has
    (no best.json, no plots yet)."""
    to.mkdir()
    for name in (SETTINGS, HISTORY):
        shutil.copy(run / name, to / name)
    return to


def assert_self_contained(text: str) -> None:
    lowered = text.lower()
    for reference in ("http://", "https://", "<script src", "<link", "@import", "url("):
        assert reference not in lowered, reference
    page = Page(text)
    assert page.images
    for src in page.images:
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert base64.b64decode(src.split(",", 1)[1], validate=True)[:8] == PNG_MAGIC


# -- one finished run --------------------------------------------------------------------------------


def test_report_of_a_run_has_every_section(runs, capsys):
    code, out, err = report(capsys, runs["op"])
    path = runs["op"] / "report.html"
    assert code == 0, err
    assert out.strip() == str(path)
    text = path.read_text()
    assert Page(text).section_ids == SECTION_IDS
    assert "10 of 10 evaluations done (finished)" in text
    assert str(runs["op"].resolve()) in text
    assert "op seed 0" in text
    # top candidates: a layer pattern and each distinct attention graph drawn
    best = max((json.loads(line) for line in (runs["op"] / HISTORY).read_text().splitlines()),
               key=lambda r: (r["fitness"] if r["status"] == "ok" else -1, -r["index"]))
    assert f"#{best['index']}" in text
    assert re.search(r"<code><b>(A|C\d+)( (A|C\d+))*</b></code>", text)
    assert "figure class='graph'" in text
    assert [p.name for p in runs["op"].glob("report.html*")] == ["report.html"]  # written atomically


def test_report_is_self_contained(runs, tmp_path):
    text = write_report([runs["op"]], tmp_path / "page.html").read_text()
    assert_self_contained(text)
    assert "<script" not in text.lower()


def test_report_escapes_what_it_shows(runs, tmp_path):
    run = copy_run(runs["op"], tmp_path / "run")
    records = [json.loads(line) for line in (run / HISTORY).read_text().splitlines()]
    records[-1].update(status="failed", reason="<script>alert(1)</script> & more", fitness=None, loss=None)
    (run / HISTORY).write_text("".join(json.dumps(r) + "\n" for r in records))
    text = write_report([run], tmp_path / "page.html").read_text()
    assert "<script>alert" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in text  # grouped under failures


def test_top_k_is_an_option(runs, tmp_path, capsys):
    out = tmp_path / "top2.html"
    assert report(capsys, runs["op"], "-o", out, "--top", "2")[0] == 0
    assert "top 2 of" in out.read_text()
    code, _, err = report(capsys, runs["op"], "--top", "0")
    assert code == 2 and "--top" in err


# -- a run still going ------------------------------------------------------------------------------


def test_report_of_a_live_run_with_a_torn_last_line(runs, tmp_path):
    run = copy_run(runs["op"], tmp_path / "live")
    raw = (run / HISTORY).read_bytes()
    last_line_start = raw.rstrip(b"\n").rfind(b"\n") + 1
    (run / HISTORY).write_bytes(raw[: last_line_start + (len(raw) - last_line_start) // 2])  # cut mid-record
    text = write_report([run], tmp_path / "live.html").read_text()
    assert Page(text).section_ids == SECTION_IDS
    assert "9 of 10 evaluations done (in progress, or stopped)" in text
    assert "a record being written is left out" in text
    assert_self_contained(text)
    assert (run / HISTORY).read_bytes() == raw[: last_line_start + (len(raw) - last_line_start) // 2]  # not repaired


@pytest.mark.parametrize("history", ["empty", "absent"])
def test_report_of_a_run_with_no_evaluations_yet(runs, tmp_path, history):
    run = copy_run(runs["op"], tmp_path / "new")
    if history == "empty":
        (run / HISTORY).write_bytes(b"")
    else:
        (run / HISTORY).unlink()
    text = write_report([run], tmp_path / "new.html").read_text()
    assert Page(text).section_ids == SECTION_IDS
    assert "0 of 10 evaluations done" in text
    assert "No candidate has been trained yet." in text
    assert_self_contained(text)


# -- several runs -----------------------------------------------------------------------------------


def test_report_of_several_runs(runs, tmp_path, capsys):
    out = tmp_path / "both.html"
    code, printed, err = report(capsys, runs["op"], runs["re"], "-o", out)
    assert code == 0, err
    assert printed.strip() == str(out)
    text = out.read_text()
    assert Page(text).section_ids == SECTION_IDS
    assert_self_contained(text)
    for label, progress in (("op seed 0", "10 of 10"), ("re seed 1", "6 of 6")):
        assert f"<th>{label}</th>" in text  # a settings column each
        assert f"{label}: {progress} evaluations done" in text
    assert re.search(r'<tr class="differs"><th>strategy</th><td>op</td><td>re</td></tr>', text)
    assert "op seed 0: top 5 of" in text and "re seed 1: top 5 of" in text


def test_runs_with_the_same_label_are_told_apart_by_folder(runs, tmp_path):
    twin = copy_run(runs["op"], tmp_path / "twin")
    text = write_report([runs["op"], twin], tmp_path / "twins.html").read_text()
    assert "op seed 0 (op)" in text and "op seed 0 (twin)" in text


# -- bad input --------------------------------------------------------------------------------------


def test_paths_that_are_not_runs_exit_2(runs, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    history_only = tmp_path / "history-only"
    history_only.mkdir()
    shutil.copy(runs["op"] / HISTORY, history_only / HISTORY)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a run")
    corrupt = copy_run(runs["op"], tmp_path / "corrupt")
    (corrupt / SETTINGS).write_text("{not json")
    for bad in (tmp_path / "missing", empty, history_only, a_file, corrupt):
        code, out, err = report(capsys, bad)
        assert code == 2, bad
        assert out == ""
        assert len(err.strip().splitlines()) == 1 and str(bad) in err, err
    # one bad path among good ones: refused before anything is written
    out_file = tmp_path / "mixed.html"
    code, _, err = report(capsys, runs["op"], empty, "-o", out_file)
    assert code == 2 and str(empty) in err and not out_file.exists()


def test_an_unwritable_output_path_exits_2(runs, tmp_path, capsys):
    code, _, err = report(capsys, runs["op"], "-o", tmp_path / "no" / "such" / "page.html")
    assert code == 2 and "does not exist" in err
    code, _, err = report(capsys, runs["op"], "-o", tmp_path)
    assert code == 2 and "is a directory" in err


# -- in a browser -----------------------------------------------------------------------------------


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot_pixels(path: Path) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        from matplotlib.image import imread

        return np.asarray(imread(path))[..., :3] * 255.0
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64)


def test_report_renders_in_headless_chromium(runs, tmp_path):
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no Chromium binary (chromium or chromium-browser) on PATH; install it to render the report")
    page = write_report([runs["op"], runs["re"]], tmp_path / "page.html")
    shot = tmp_path / "screenshot.png"
    result = subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", "--window-size=1200,3000", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=180, env={**os.environ, "HOME": str(tmp_path)},
    )
    assert shot.exists(), f"chromium wrote no screenshot (exit {result.returncode}): {result.stderr[-2000:]}"
    pixels = screenshot_pixels(shot)
    assert pixels.shape[:2] == (3000, 1200)
    assert pixels.std() > 20, "the rendered page is blank"
    title_band = pixels[:120]  # the title and run list at the top of the page
    assert (title_band.min(axis=2) < 100).mean() > 0.01, "no dark text at the top of the page"
    rows_drawn = (pixels.std(axis=(1, 2)) > 1).mean()
    assert rows_drawn > 0.5, f"only {rows_drawn:.0%} of the page's rows show anything"
