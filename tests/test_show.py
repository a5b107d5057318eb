"""`genomec show`: text stages with one line per node, DOT text that any DOT parser reads
back, and a drawing whose edges never pass through a box and show operand order."""

import json
import random
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import GENOMES, SHARED_GENOMES, zoo_graphs
from genomec.cli import main
from genomec.genome import load_genome, parse_genome
from genomec.genome.generate import random_attention
from genomec.ir import format_ir, lower
from genomec.ir.draw import draw_png, label_lines, layout, to_dot
from genomec.ir.graph import format_id

# Ids that broke the printers: a quote, a backslash (also trailing, which would escape the
# closing quote), a line break, a space, a comma and brackets (which would read as operands).
ODD_IDS = ['k"t\\', "s\nx", "a b", "p(1, 2)", "t\\", "tab\there", "uni\u2028code"]


def odd_genome() -> dict:
    kt, s, z, p, o, t, u = ODD_IDS
    return {
        "name": 'odd "ids"\nsecond line',
        "nodes": [
            {"id": kt, "op": "transpose", "args": ["k"]},
            {"id": s, "op": "matmul", "args": ["q", kt]},
            {"id": z, "op": "scale", "args": [s]},
            {"id": p, "op": "softmax", "args": [z]},
            {"id": o, "op": "matmul", "args": [p, "v"]},
            {"id": t, "op": "add", "args": [o, o]},
            {"id": u, "op": "neg", "args": [t]},
        ],
        "output": u,
    }


def odd_ir():
    return lower(parse_genome(odd_genome())).parsed


# -- text stages -------------------------------------------------------------------------------


def test_format_id_keeps_plain_ids_and_quotes_the_rest():
    for plain in ("kt", "e12", "s_2", "k'", "n.1", "a-b"):
        assert format_id(plain) == plain
    for odd in ODD_IDS + ['"quoted"', "x=y", "a:b", "", "é\x00"]:
        printed = format_id(odd)
        assert printed.startswith('"') and printed.isprintable() and "\n" not in printed
        assert json.loads(printed) == odd


def test_parsed_stage_prints_one_line_per_node(tmp_path, capsys):
    ir = odd_ir()
    text = format_ir(ir)
    lines = text.splitlines()
    ops = [(i, n) for i, n in ir.nodes() if n.op != "input"]
    assert len(lines) == 1 + len(ops) + 1  # header, one per op, return
    for line, (node_id, node) in zip(lines[1:], ops):
        lhs, rhs = re.match(r'\s+("(?:[^"\\]|\\.)*"|\S+) = (.*)$', line).groups()
        assert json.loads(lhs) == node_id if lhs.startswith('"') else lhs == node_id
        assert rhs.startswith(node.op + "(")
    assert lines[-1] == '  return "uni\\u2028code"'
    assert '  "tab\\there" = add("t\\\\", "t\\\\")  ' in text
    assert '  "p(1, 2)" = softmax("a b")  ' in text

    path = tmp_path / "odd.json"
    path.write_text(json.dumps(odd_genome()))
    assert main(["show", str(path), "--stage", "parsed"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# odd \"ids\"\\nsecond line  hash ")  # the name on one line
    assert out[1:] == lines


def test_plain_ids_print_as_before():
    ir = lower(load_genome(SHARED_GENOMES / "standard-attention.json")).parsed
    assert "  s = matmul(q, kt)" in format_ir(ir) and '"' not in format_ir(ir)


# -- DOT text, read back by a scanner that follows Graphviz's scan.l ---------------------------

DOT_TOKEN = re.compile(r"""
    (?P<space>\s+|//[^\n]*|/\*.*?\*/)
  | (?P<quoted>"(?:\\\\|\\"|\\\n|[^"\\]|\\)*+")
  | (?P<arrow>->)
  | (?P<punct>[{}\[\];,=])
  | (?P<name>[A-Za-z_\x80-\uffff][\w\x80-\uffff]*|-?(?:\.\d+|\d+(?:\.\d*)?))
""", re.VERBOSE | re.DOTALL)


def dot_tokens(text: str) -> list[tuple[str, str]]:
    """(kind, value) tokens. In a quoted string the scanner turns \\" into a quote, drops a
    backslash-newline and keeps every other character, a \\\\ pair included; anything the
    grammar does not know (a stray quote, a backslash outside a string) is an error."""
    tokens, at = [], 0
    while at < len(text):
        match = DOT_TOKEN.match(text, at)
        assert match, f"not DOT at offset {at}: {text[at:at + 40]!r}"
        kind = match.lastgroup
        value = match.group()
        if kind == "quoted":
            value = re.sub(r'\\\\|\\"|\\\n', lambda m: {"\\\\": "\\\\", '\\"': '"', "\\\n": ""}[m.group()], value[1:-1])
            kind = "name"
        if kind != "space":
            tokens.append((kind, value))
        at = match.end()
    return tokens


def parse_dot(text: str) -> dict:
    """The subset of DOT that to_dot writes: {"nodes": {name: attrs}, "edges": [(a, b, attrs)],
    "clusters": {name: attrs}}. Fails on anything else."""
    tokens = dot_tokens(text)
    at = 0

    def take(kind=None, value=None):
        nonlocal at
        assert at < len(tokens), "unexpected end of the DOT text"
        k, v = tokens[at]
        assert (kind is None or k == kind) and (value is None or v == value), f"expected {value or kind}, got {v!r}"
        at += 1
        return v

    def peek():
        return tokens[at][1] if at < len(tokens) else None

    def attrs() -> dict:
        found = {}
        if peek() == "[":
            take(value="[")
            while peek() != "]":
                key = take("name")
                take(value="=")
                found[key] = take("name")
                if peek() in (",", ";"):
                    take()
            take(value="]")
        return found

    graph = {"nodes": {}, "edges": [], "clusters": {}}

    def body(cluster=None):
        take(value="{")
        while peek() != "}":
            if peek() == "subgraph":
                take()
                name = take("name")
                graph["clusters"][name] = {}
                body(name)
            else:
                name = take("name")
                if peek() == "=":
                    take()
                    value = take("name")
                    if cluster:
                        graph["clusters"][cluster][name] = value
                elif peek() == "->":
                    take()
                    graph["edges"].append((name, take("name"), attrs()))
                elif name in ("node", "edge", "graph"):
                    attrs()
                else:
                    graph["nodes"][name] = attrs()
            if peek() == ";":
                take()
        take(value="}")

    take("name", "digraph")
    if peek() != "{":
        take("name")
    body()
    assert at == len(tokens), "text after the graph"
    return graph


def shown_label(value: str) -> list[str]:
    """The lines Graphviz shows for a label value: \\n, \\l, \\r break the line, \\x shows x."""
    lines, line, i = [], "", 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            if value[i + 1] in "nlr":
                lines.append(line)
                line = ""
            else:
                line += value[i + 1]
            i += 2
        elif c == "\n":
            lines.append(line)
            line, i = "", i + 1
        else:
            line, i = line + c, i + 1
    return lines + [line]


def test_the_dot_checker_rejects_what_graphviz_rejects():
    with pytest.raises(AssertionError):
        parse_dot('digraph genome {\n  "k"t\\" [label="k"t\\"];\n}\n')  # the old, unescaped output
    with pytest.raises(AssertionError):
        parse_dot('digraph { "t\\" -> "o"; }')  # a trailing backslash escaped the closing quote
    assert parse_dot('digraph { "t\\\\" -> "o" [label="0"]; }')["edges"] == [("t\\\\", "o", {"label": "0"})]


def check_dot(text: str, graphs) -> None:
    parsed = parse_dot(text)
    node_names = set()
    for index, (title, ir) in enumerate(graphs):
        prefix = f"g{index}_" if len(graphs) > 1 else ""
        # the scanner keeps a \\ pair as two characters, so a node's name is the printed id
        # with its backslashes doubled
        name = {node_id: (prefix + format_id(node_id)).replace("\\", "\\\\") for node_id in ir.graph}
        assert len(set(name.values())) == len(name)  # distinct ids give distinct DOT names
        node_names |= set(name.values())
        for node_id, dot_name in name.items():
            assert shown_label(parsed["nodes"][dot_name]["label"]) == list(label_lines(ir, node_id))
        expected = sorted(
            (name[o], name[n], str(p) if len(node.operands) > 1 else "")
            for n, node in ir.nodes() for p, o in enumerate(node.operands)
        )
        found = [(a, b, at.get("label", "")) for a, b, at in parsed["edges"] if a in name.values()]
        assert sorted(found) == expected
        if len(graphs) > 1:
            assert shown_label(parsed["clusters"][f"cluster_{index}"]["label"]) == [title.replace("\n", "\\n")]
    assert set(parsed["nodes"]) == node_names
    dot = shutil.which("dot")
    if dot:  # the real parser too, when Graphviz is installed
        result = subprocess.run([dot, "-Tdot"], input=text, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr


def test_dot_text_of_odd_ids_parses_back():
    ir = odd_ir()
    check_dot(to_dot([("odd", ir)]), [("odd", ir)])
    standard = lower(load_genome(SHARED_GENOMES / "standard-attention.json")).parsed
    graphs = [('title with "quotes" \\ and\nbreak', ir), ("standard", standard)]
    check_dot(to_dot(graphs), graphs)


def test_show_writes_dot_that_parses_back(tmp_path, capsys):
    path, out = tmp_path / "odd.json", tmp_path / "odd.dot"
    path.write_text(json.dumps(odd_genome()))
    assert main(["show", str(path), "--stage", "parsed", "--dot", str(out)]) == 0
    capsys.readouterr()
    ir = odd_ir()
    check_dot(out.read_text(), [("odd", ir)])
    model = GENOMES / "autobert-zero.json"
    assert main(["show", str(model), "--dot", str(out)]) == 0
    from genomec.api import distinct_graphs

    entries = distinct_graphs(load_genome(model))
    check_dot(out.read_text(), [(f"{e.title} ({e.compiled.hash[:8]})", e.compiled.simplified) for e in entries])


# -- the layered layout ------------------------------------------------------------------------


def segment_hits_box(a, b, box, inset=0.0) -> bool:
    """Whether segment ab meets the box (closed; shrunk by `inset` on every side), by
    Liang-Barsky clipping."""
    (x0, y0), (x1, y1) = a, b
    left, right, bottom, top = box.left + inset, box.right - inset, box.bottom + inset, box.top - inset
    t0, t1 = 0.0, 1.0
    for p, q in ((x0 - x1, x0 - left), (x1 - x0, right - x0), (y0 - y1, y0 - bottom), (y1 - y0, top - y0)):
        if p == 0:
            if q < 0:
                return False
        else:
            t = q / p
            if p < 0:
                t0 = max(t0, t)
            else:
                t1 = min(t1, t)
            if t0 > t1:
                return False
    return True


def segments_cross(a, b, c, d) -> bool:
    """Whether segments ab and cd cross at a point inside both."""
    def side(p, q, r):
        return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])
    return side(a, b, c) * side(a, b, d) < 0 and side(c, d, a) * side(c, d, b) < 0


def check_layout(ir):
    drawing = layout(ir)
    boxes = drawing.boxes
    assert set(boxes) == set(ir.graph)
    for box in boxes.values():  # inside the picture
        assert 0 <= box.left and box.right <= drawing.width and 0 <= box.bottom and box.top <= drawing.height
    for a in boxes.values():  # boxes apart
        for b in boxes.values():
            if a.node < b.node:
                assert a.right <= b.left or b.right <= a.left or a.top <= b.bottom or b.top <= a.bottom
    edges = {}
    for edge in drawing.edges:
        edges.setdefault(edge.target, []).append(edge)
        source, target = boxes[edge.source], boxes[edge.target]
        (sx, sy), (tx, ty) = edge.points[0], edge.points[-1]
        assert sy == source.bottom and source.left <= sx <= source.right, "an edge leaves its source's bottom"
        assert ty == target.top and target.left <= tx <= target.right, "an edge enters its target's top"
        for i, (a, b) in enumerate(zip(edge.points, edge.points[1:])):
            for box in boxes.values():
                if box.node in (edge.source, edge.target):
                    # its own boxes: touched at the end points only, never entered
                    assert not segment_hits_box(a, b, box, inset=1e-6), f"{edge} enters {box.node!r}"
                else:
                    assert not segment_hits_box(a, b, box), f"edge {edge.source!r}->{edge.target!r} crosses {box.node!r}"
    # one edge per operand, labelled with its position when the op has several
    for node_id, node in ir.nodes():
        incoming = edges.get(node_id, [])
        assert sorted((e.source, e.position) for e in incoming) == sorted((o, p) for p, o in enumerate(node.operands))
        for e in incoming:
            if len(node.operands) > 1:
                assert e.label == str(e.position) and e.label_at is not None
            else:
                assert e.label is None
    return drawing


def standard_attention_irs():
    for path in (SHARED_GENOMES / "standard-attention.json", GENOMES / "standard-attention.json"):
        compiled = lower(load_genome(path))
        yield compiled.parsed
        yield compiled.simplified


def test_standard_attention_layout_is_unambiguous():
    for ir in standard_attention_irs():
        drawing = check_layout(ir)
        matmul = next(n for n, node in ir.nodes() if node.op == "matmul" and ir.node(node.operands[0]).op == "input")
        transpose = next(n for n, node in ir.nodes() if node.op == "transpose")
        assert {e.label for e in drawing.edges if e.target == matmul} == {"0", "1"}
        q_edge = next(e for e in drawing.edges if e.source == "q")
        assert not any(segment_hits_box(a, b, drawing.boxes[transpose]) for a, b in zip(q_edge.points, q_edge.points[1:]))
        # and no two edges cross
        segments = [(e, a, b) for e in drawing.edges for a, b in zip(e.points, e.points[1:])]
        for e, a, b in segments:
            for f, c, d in segments:
                if e is not f:
                    assert not segments_cross(a, b, c, d), f"{e.source}->{e.target} crosses {f.source}->{f.target}"


def test_layout_of_the_zoo_and_odd_ids():
    check_layout(odd_ir())
    for _, genome in zoo_graphs():
        compiled = lower(genome)
        check_layout(compiled.parsed)
        check_layout(compiled.simplified)


@pytest.mark.parametrize("seed", range(12))
def test_layout_of_random_graphs(seed):
    rng = random.Random(seed)
    for form in ("attention", "dag"):
        genome = random_attention(rng.choice, max_nodes=14, form=form)
        compiled = lower(genome)
        check_layout(compiled.parsed)
        check_layout(compiled.simplified)


def test_layout_spreads_a_doubled_operand():
    drawing = layout(odd_ir())
    doubled = [e for e in drawing.edges if e.target == ODD_IDS[5]]
    assert sorted(e.label for e in doubled) == ["0", "1"] and doubled[0].points != doubled[1].points


# -- drawing -----------------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n"


def test_drawing_leaves_the_matplotlib_backend_alone(tmp_path):
    """In a fresh process with the pdf backend chosen: drawing neither switches it nor
    imports pyplot."""
    out = tmp_path / "g.png"
    script = textwrap.dedent(f"""
        import sys
        import matplotlib
        matplotlib.use("pdf")
        from genomec.genome import load_genome
        from genomec.ir import lower
        from genomec.ir.draw import draw_png
        had_pyplot = "matplotlib.pyplot" in sys.modules
        ir = lower(load_genome({str(SHARED_GENOMES / "standard-attention.json")!r})).parsed
        draw_png([("standard", ir), ("again", ir)], {str(out)!r}, engine="matplotlib")
        assert matplotlib.get_backend() == "pdf", matplotlib.get_backend()
        assert had_pyplot or "matplotlib.pyplot" not in sys.modules, "drawing imported pyplot"
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == PNG


def test_draw_png_with_matplotlib(tmp_path):
    out = tmp_path / "odd.png"
    draw_png([('odd "ids"\nname', odd_ir())], out, engine="matplotlib")
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 5_000


def fake_dot(tmp_path, exit_code: int):
    """A `dot` that saves its input beside the -o file and writes a marker there."""
    script = tmp_path / "dot"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        out = sys.argv[sys.argv.index("-o") + 1]
        open(out + ".in", "w").write(sys.stdin.read())
        open(out, "w").write("from fake dot")
        sys.exit({exit_code})
    """))
    script.chmod(0o755)
    return script


def test_draw_png_uses_graphviz_when_installed(tmp_path, monkeypatch):
    import genomec.ir.draw as draw

    ir = odd_ir()
    monkeypatch.setattr(draw.shutil, "which", lambda name: str(fake_dot(tmp_path, 0)) if name == "dot" else None)
    out = tmp_path / "g.png"
    draw_png([("odd", ir)], out)
    assert out.read_text() == "from fake dot"
    assert (tmp_path / "g.png.in").read_text() == to_dot([("odd", ir)])
    # a dot that fails: the matplotlib drawing instead
    monkeypatch.setattr(draw.shutil, "which", lambda name: str(fake_dot(tmp_path, 1)) if name == "dot" else None)
    draw_png([("odd", ir)], out)
    assert out.read_bytes()[:8] == PNG
    with pytest.raises(RuntimeError):
        draw_png([("odd", ir)], out, engine="graphviz")
    monkeypatch.setattr(draw.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError):
        draw_png([("odd", ir)], out, engine="graphviz")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_draw_png_with_real_graphviz(tmp_path):
    out = tmp_path / "g.png"
    draw_png([("odd", odd_ir())], out, engine="graphviz")
    assert out.read_bytes()[:8] == PNG


def test_show_draws_png(tmp_path, capsys):
    path, out = tmp_path / "odd.json", tmp_path / "odd.png"
    path.write_text(json.dumps(odd_genome()))
    assert main(["show", str(path), "--stage", "parsed", "--dot", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG
    assert f"drew 1 graph(s) to {out}" in capsys.readouterr().out
