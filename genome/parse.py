"""Genome files -> validated genome records, with one clear message per problem.

Both attention-graph forms (graph with `nodes`, and `expr`) and model genomes are read
here (SPEC 2). Validation collects every problem it can find before raising, each naming
the node or key at fault, so a user fixes a file in one round.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from dataclasses import replace
from pathlib import Path

from .ops import INPUT_NAMES, INPUT_SHAPE, OPS, OUTPUT_SHAPE, ShapeError, format_shape
from .schema import (
    CONFIG_LIMITS,
    CONV_VARIANTS,
    DEFAULT_CONFIG,
    MAX_LAYERS,
    AttentionGenome,
    AttentionLayer,
    ConvLayer,
    Genome,
    GenomeError,
    ModelGenome,
    NodeSpec,
)

MAX_NODES = 64
MAX_EXPR_DEPTH = 256  # deeper nesting is over any node limit; stop before Python's stack does
MAX_EXPR_NODES = 100_000  # to_expr refuses to write out a shared DAG as a tree larger than this
MAX_EXPR_CHARS = 16 * MAX_EXPR_NODES  # room for any tree to_expr writes (op names are short)
MAX_FILE_BYTES = 4 * 2**20  # a genome file; the largest real ones are a few kilobytes
MAX_NUMBER_DIGITS = 20  # no genome value needs more (Python itself refuses ints over 4300 digits)

GRAPH_KEYS = {"inputs", "nodes", "output", "expr", "causal", "name", "notes"}
MODEL_KEYS = {"name", "notes", "config", "layers"}
NODE_KEYS = {"id", "op", "args"}


# -- reading files -------------------------------------------------------------------


def _reject_duplicate_keys(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise GenomeError(f"duplicate key '{key}' in one JSON object")
        seen[key] = value
    return seen


def _json_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise GenomeError(f"the number {digits[:12]}... has {len(digits.lstrip('-'))} digits, more than any genome value needs")
    return int(digits)


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise GenomeError(f"the number {_clip(text)} is out of range")
    return value


def _json_constant(name: str):
    raise GenomeError(f"{name} is not a JSON number (genome values are finite numbers)")


def _clip(text: str, width: int = 24) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def loads_genome(text: str, source: str | None = None, max_nodes: int = MAX_NODES) -> Genome:
    """Parse genome JSON text. Raises GenomeError (with `source` in every line)."""
    if len(text) > MAX_FILE_BYTES:
        raise GenomeError(f"{len(text):,} characters, over the limit of {_size_limit()} for a genome", source)
    try:
        obj = json.loads(
            text, object_pairs_hook=_reject_duplicate_keys,
            parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant,
        )
    except json.JSONDecodeError as e:
        raise GenomeError(f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}", source) from None
    except RecursionError:
        raise GenomeError("malformed JSON: nested too deeply", source) from None
    except GenomeError as e:
        raise GenomeError(e.problems, source) from None
    try:
        return parse_genome(obj, max_nodes=max_nodes)
    except GenomeError as e:
        raise GenomeError(e.problems, source) from None


def load_genome(path: str | Path, max_nodes: int = MAX_NODES) -> Genome:
    path = Path(path)
    return loads_genome(read_genome_text(path), source=str(path), max_nodes=max_nodes)


def read_genome_text(path: Path) -> str:
    """A genome file's text, read no further than MAX_FILE_BYTES (a device such as
    /dev/zero, or a huge file, is refused without reading it whole)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise GenomeError("no such file", str(path)) from None
    except IsADirectoryError:
        raise GenomeError("is a directory, not a genome file", str(path)) from None
    except OSError as e:
        raise GenomeError(f"cannot read it ({e.strerror or e})", str(path)) from None
    if len(data) > MAX_FILE_BYTES:
        how_large = f"{size:,} bytes" if size > MAX_FILE_BYTES else f"more than {_size_limit()}"
        raise GenomeError(f"{how_large}, over the limit of {_size_limit()} for a genome file", str(path))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise GenomeError("not a UTF-8 text file", str(path)) from None


def _size_limit() -> str:
    return f"{MAX_FILE_BYTES // 2**20} MiB"


def parse_genome(obj, max_nodes: int = MAX_NODES) -> Genome:
    """A decoded JSON value -> AttentionGenome or ModelGenome (chosen by a "layers" key)."""
    if not isinstance(obj, dict):
        raise GenomeError(f"a genome is a JSON object, got {_json_type(obj)}")
    if "layers" in obj:
        return parse_model(obj, max_nodes=max_nodes)
    return parse_attention(obj, max_nodes=max_nodes)


def _json_type(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


# -- expression form -------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[(),]))")


_SPACE = re.compile(r"\s*")


def _tokenize(text: str) -> list[tuple[str, int]]:
    """(token, column) pairs, columns counted from 1. Linear in the length of `text`."""
    tokens, pos, end = [], 0, len(text.rstrip())
    while pos < end:
        m = _TOKEN.match(text, pos)
        if m is None:
            col = _SPACE.match(text, pos).end() + 1
            raise GenomeError(f"expr column {col}: unexpected character {text[col - 1]!r}")
        kind = "name" if m.group("name") else "punct"
        tokens.append((m.group(kind), m.start(kind) + 1))
        pos = m.end()
    return tokens


def parse_expr(text: str) -> tuple[list[NodeSpec], str]:
    """An expression -> (nodes in post-order, output id). Every call gets its own node;
    repeated sub-expressions become shared nodes in the IR's CSE pass."""
    if not isinstance(text, str):
        raise GenomeError(f"'expr' must be a string, got {_json_type(text)}")
    if len(text) > MAX_EXPR_CHARS:
        raise GenomeError(f"'expr' is {len(text):,} characters long, over the limit of {MAX_EXPR_CHARS:,}")
    tokens = _tokenize(text)
    if not tokens:
        raise GenomeError("'expr' is empty")
    nodes: list[NodeSpec] = []
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else ("end of expression", len(text) + 1)

    def expect(token):
        nonlocal pos
        got, col = peek()
        if got != token:
            raise GenomeError(f"expr column {col}: expected '{token}', got '{got}'")
        pos += 1

    def parse(depth: int = 0) -> str:
        nonlocal pos
        name, col = peek()
        if depth > MAX_EXPR_DEPTH:
            raise GenomeError(f"expr column {col}: nested deeper than {MAX_EXPR_DEPTH} levels")
        if not re.fullmatch(r"[A-Za-z_]\w*", name):
            raise GenomeError(f"expr column {col}: expected an input or an op, got '{name}'")
        pos += 1
        if peek()[0] != "(":
            if name not in INPUT_NAMES:
                hint = f"; did you mean the op '{name}(...)'?" if name in OPS else ""
                raise GenomeError(f"expr column {col}: unknown name '{name}' (inputs are q, k, v){hint}")
            return name
        expect("(")
        args = [parse(depth + 1)]
        while peek()[0] == ",":
            pos += 1
            args.append(parse(depth + 1))
        got, end_col = peek()
        if got != ")":
            raise GenomeError(f"expr column {end_col}: expected ',' or ')', got '{got}'")
        pos += 1
        snippet = text[col - 1 : min(end_col, col + 48)]  # no copy of a long call's whole text
        if len(snippet) > 48:
            snippet = snippet[:45] + "..."
        node_id = f"e{len(nodes) + 1}"
        nodes.append(NodeSpec(node_id, name, tuple(args), f"expr column {col} '{snippet}'"))
        return node_id

    output = parse()
    if pos != len(tokens):
        got, col = tokens[pos]
        raise GenomeError(f"expr column {col}: unexpected '{got}' after the end of the expression")
    return nodes, output


# -- attention graphs ------------------------------------------------------------------


def _closest(name: str, choices) -> str:
    match = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _read_graph_nodes(raw, problems: list[str]) -> list[NodeSpec]:
    if not isinstance(raw, list):
        problems.append(f"'nodes' must be an array of node objects, got {_json_type(raw)}")
        return []
    nodes = []
    for index, item in enumerate(raw):
        label = f"nodes[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{label}: a node is an object with id, op and args, got {_json_type(item)}")
            continue
        node_id = item.get("id")
        if isinstance(node_id, str) and node_id:
            label = f"node '{node_id}'"
        else:
            problems.append(f"{label}: 'id' must be a non-empty string")
            continue
        for key in sorted(set(item) - NODE_KEYS):
            problems.append(f"{label}: unknown key '{key}' (a node has id, op, args)")
        op, args = item.get("op"), item.get("args")
        if not isinstance(op, str):
            problems.append(f"{label}: 'op' must be a string")
            continue
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            problems.append(f"{label}: 'args' must be an array of node ids or inputs")
            continue
        nodes.append(NodeSpec(node_id, op, tuple(args), label))
    return nodes


def _topological(nodes: list[NodeSpec], problems: list[str]) -> list[NodeSpec] | None:
    """Nodes ordered so that operands come first (file order kept where free), or None
    with a problem naming the cycle."""
    by_id = {n.id: n for n in nodes}
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    order: list[NodeSpec] = []
    for root in nodes:
        if state.get(root.id):
            continue
        stack = [(root.id, iter(root.args))]
        state[root.id] = 1
        while stack:
            node_id, pending = stack[-1]
            for arg in pending:
                if arg not in by_id:
                    continue
                if state.get(arg) == 1:
                    path = [n for n, _ in stack]
                    cycle = path[path.index(arg) :] + [arg]
                    problems.append(f"node '{arg}': cycle {' -> '.join(cycle)}")
                    return None
                if not state.get(arg):
                    state[arg] = 1
                    stack.append((arg, iter(by_id[arg].args)))
                    break
            else:
                stack.pop()
                state[node_id] = 2
                order.append(by_id[node_id])
    return order


def parse_attention(obj, max_nodes: int = MAX_NODES) -> AttentionGenome:
    """A decoded attention graph (either form) -> AttentionGenome. The file's own rules
    (keys, field types, the two forms) are checked here, the graph's in `_check_attention`."""
    if not isinstance(obj, dict):
        raise GenomeError(f"an attention graph is a JSON object, got {_json_type(obj)}")
    problems: list[str] = []
    for key in sorted(set(obj) - GRAPH_KEYS):
        problems.append(f"unknown key '{key}'{_closest(key, GRAPH_KEYS)}")
    causal = obj.get("causal", False)
    if not isinstance(causal, bool):
        problems.append(f"'causal' must be true or false, got {_json_type(causal)}")
    for key in ("name", "notes"):
        if key in obj and not isinstance(obj[key], str):
            problems.append(f"'{key}' must be a string")

    declared = obj.get("inputs")
    if declared is not None and (not isinstance(declared, list) or not all(isinstance(i, str) for i in declared)):
        problems.append("'inputs' must be an array of input names (q, k, v)")
        declared = None

    # -- the two forms --
    nodes: list[NodeSpec] = []
    output = None
    if ("nodes" in obj) == ("expr" in obj):
        problems.append("a graph has exactly one of 'nodes' (with 'output') or 'expr'")
    elif "expr" in obj:
        if "output" in obj:
            problems.append("'output' belongs to the 'nodes' form; an 'expr' is its own output")
        try:
            nodes, output = parse_expr(obj["expr"])
        except GenomeError as e:
            problems.extend(e.problems)
    else:
        nodes = _read_graph_nodes(obj["nodes"], problems)
        output = obj.get("output")
        if not isinstance(output, str):
            problems.append("'output' must name the node (or input) that is the graph's result")
            output = None

    ordered, inputs = _check_attention(nodes, output, declared, max_nodes, problems)
    return AttentionGenome(
        nodes=ordered, output=output, inputs=inputs, causal=causal, name=obj.get("name"), notes=obj.get("notes")
    )


def validate_attention(genome: AttentionGenome, max_nodes: int = MAX_NODES) -> AttentionGenome:
    """The parser's rules applied to a genome value (no JSON round trip): the same genome
    with its nodes in topological order, or GenomeError with the parser's messages."""
    ordered, inputs = _check_attention(list(genome.nodes), genome.output, list(genome.inputs), max_nodes, [])
    return replace(genome, nodes=ordered, inputs=inputs)


def _check_attention(
    nodes: list[NodeSpec], output: str | None, declared: list[str] | None, max_nodes: int, problems: list[str]
) -> tuple[tuple[NodeSpec, ...], tuple[str, ...]]:
    """The rules of an attention graph, for the parser and for values alike: inputs, ids,
    ops and arity, references, then order and cycles, the node limit, shapes. Returns the
    nodes in topological order and the inputs (declared, or else the referenced ones), or
    raises GenomeError with `problems` (found by the caller) and every problem found here.
    `output` and `declared` are None when the caller has already reported them bad."""
    if declared is not None:
        for name in declared:
            if name not in INPUT_NAMES:
                problems.append(f"'inputs': unknown input '{name}' (inputs are q, k, v)")
        if len(set(declared)) != len(declared):
            problems.append("'inputs': an input is listed twice")

    # -- names, ops, arity --
    seen: set[str] = set()
    for n in nodes:
        if n.id in INPUT_NAMES:
            problems.append(f"{n.where}: id '{n.id}' shadows the input of that name")
        elif n.id in seen:
            problems.append(f"{n.where}: duplicate id '{n.id}'")
        seen.add(n.id)
        if n.op not in OPS:
            problems.append(f"{n.where}: unknown op '{n.op}'{_closest(n.op, OPS)}")
        elif len(n.args) != OPS[n.op].arity:
            problems.append(f"{n.where}: {n.op} takes {OPS[n.op].arity} operand(s), got {len(n.args)}")
    allowed_inputs = set(declared) if declared is not None else set(INPUT_NAMES)
    for n in nodes:
        for arg in n.args:
            if arg in INPUT_NAMES:
                if arg not in allowed_inputs:
                    problems.append(f"{n.where}: uses input '{arg}', which 'inputs' does not list")
            elif arg not in seen:
                problems.append(f"{n.where}: argument '{arg}' is not a node id or input{_closest(arg, seen)}")
    if output is not None and output not in seen and output not in INPUT_NAMES:
        problems.append(f"'output': '{output}' is not a node id or input{_closest(output, seen)}")
    elif output in INPUT_NAMES and output not in allowed_inputs:
        problems.append(f"'output': input '{output}' is not listed in 'inputs'")
    if problems:
        raise GenomeError(problems)

    ordered = _topological(nodes, problems)
    if ordered is None:
        raise GenomeError(problems)
    distinct = _distinct_nodes(ordered)
    if distinct > max_nodes:
        raise GenomeError(f"the graph has {distinct} nodes, over the limit of {max_nodes}")

    # -- shapes --
    shapes = {name: INPUT_SHAPE for name in INPUT_NAMES}
    for n in ordered:
        if any(a not in shapes for a in n.args):
            continue  # an operand already failed; its own problem is reported
        try:
            shapes[n.id] = OPS[n.op].shape(*(shapes[a] for a in n.args))
        except ShapeError as e:
            problems.append(f"{n.where}: {e}")
    if output in shapes and shapes[output] != OUTPUT_SHAPE:
        where = next((n.where for n in nodes if n.id == output), f"input '{output}'")
        problems.append(
            f"{where}: the output must have shape {format_shape(OUTPUT_SHAPE)}, got {format_shape(shapes[output])}"
        )
    if problems:
        raise GenomeError(problems)

    if declared is None:
        referenced = {a for n in nodes for a in n.args} | {output}
        declared = [name for name in INPUT_NAMES if name in referenced]
    return tuple(ordered), tuple(declared)


def _distinct_nodes(ordered: list[NodeSpec]) -> int:
    """How many different computations the nodes (operands first) hold: identical op and
    operands count once, as CSE merges them, so an expression's shared sub-expressions
    and a graph's shared nodes count alike."""
    computation: dict[tuple, int] = {}  # (op, operand numbers) -> number
    number: dict[str, int] = {}
    for n in ordered:
        key = (n.op, tuple(number.get(a, a) for a in n.args))
        number[n.id] = computation.setdefault(key, len(computation))
    return len(computation)


def _subexpression(node: NodeSpec, by_id: dict[str, NodeSpec]) -> str:
    args = ",".join(_subexpression(by_id[a], by_id) if a in by_id else a for a in node.args)
    return f"{node.op}({args})"


# -- model genomes ---------------------------------------------------------------------


def _check_config(config, problems: list[str]) -> dict:
    merged = dict(DEFAULT_CONFIG)
    if not isinstance(config, dict):
        problems.append(f"'config' must be an object, got {_json_type(config)}")
        return merged
    for key, value in config.items():
        if key not in DEFAULT_CONFIG:
            problems.append(f"config: unknown key '{key}'{_closest(key, DEFAULT_CONFIG)}")
            continue
        default = DEFAULT_CONFIG[key]
        if isinstance(default, int):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"config: '{key}' must be a positive integer, got {_dumps(value)}")
                continue
            if value > CONFIG_LIMITS[key]:
                problems.append(f"config: '{key}' must be at most {CONFIG_LIMITS[key]}, got {value}")
                continue
        elif key.endswith("dropout_prob"):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
                problems.append(f"config: '{key}' must be a number in [0, 1), got {_dumps(value)}")
                continue
        elif not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
            problems.append(f"config: '{key}' must be a positive finite number, got {_dumps(value)}")
            continue
        merged[key] = value
    if merged["hidden_size"] % merged["num_heads"]:
        problems.append(
            f"config: hidden_size {merged['hidden_size']} is not divisible by num_heads {merged['num_heads']}"
        )
    if merged["max_kernel_size"] % 2 == 0:
        problems.append(f"config: 'max_kernel_size' must be odd, got {merged['max_kernel_size']}")
    return merged


def parse_model(obj, max_nodes: int = MAX_NODES) -> ModelGenome:
    problems: list[str] = []
    for key in sorted(set(obj) - MODEL_KEYS):
        problems.append(f"unknown key '{key}'{_closest(key, MODEL_KEYS)}")
    for key in ("name", "notes"):
        if key in obj and not isinstance(obj[key], str):
            problems.append(f"'{key}' must be a string")
    config = _check_config(obj.get("config", {}), problems)
    raw_layers = obj.get("layers")
    layers = []
    if not isinstance(raw_layers, list) or not raw_layers:
        problems.append("'layers' must be a non-empty array of layers")
        raw_layers = []
    elif len(raw_layers) > MAX_LAYERS:
        problems.append(f"'layers' has {len(raw_layers)} layers, over the limit of {MAX_LAYERS}")
        raw_layers = []  # not worth checking one by one
    for index, layer in enumerate(raw_layers):
        label = f"layers[{index}]"
        if not isinstance(layer, dict):
            problems.append(f"{label}: a layer is an object, got {_json_type(layer)}")
            continue
        kind = layer.get("type")
        if kind == "attention":
            for key in sorted(set(layer) - {"type", "graph"}):
                problems.append(f"{label}: unknown key '{key}' (an attention layer has type, graph)")
            if "graph" not in layer:
                problems.append(f"{label}: an attention layer needs a 'graph'")
                continue
            try:
                layers.append(AttentionLayer(parse_attention(layer["graph"], max_nodes=max_nodes)))
            except GenomeError as e:
                problems.extend(f"{label}.graph: {p}" for p in e.problems)
        elif kind == "conv":
            for key in sorted(set(layer) - {"type", "kernel_size", "variant"}):
                problems.append(f"{label}: unknown key '{key}' (a conv layer has type, kernel_size, variant)")
            conv = ConvLayer(layer.get("kernel_size"), layer.get("variant", "light"))
            if _check_conv(label, conv, config["max_kernel_size"], problems):
                layers.append(conv)
        else:
            problems.append(f"{label}: 'type' must be \"attention\" or \"conv\", got {json.dumps(kind)}")
    if problems:
        raise GenomeError(problems)
    return ModelGenome(layers=tuple(layers), config=config, name=obj.get("name"), notes=obj.get("notes"))


def validate_model(genome: ModelGenome, max_nodes: int = MAX_NODES) -> ModelGenome:
    """The parser's rules applied to a model genome value: the same genome (its graphs'
    nodes in topological order), or GenomeError with the parser's messages."""
    problems: list[str] = []
    config = _check_config(genome.config, problems)
    if not genome.layers:
        problems.append("'layers' must be a non-empty array of layers")
    elif len(genome.layers) > MAX_LAYERS:
        problems.append(f"'layers' has {len(genome.layers)} layers, over the limit of {MAX_LAYERS}")
        raise GenomeError(problems)
    layers = []
    for index, layer in enumerate(genome.layers):
        label = f"layers[{index}]"
        if isinstance(layer, AttentionLayer):
            try:
                layers.append(AttentionLayer(validate_attention(layer.graph, max_nodes=max_nodes)))
            except GenomeError as e:
                problems.extend(f"{label}.graph: {p}" for p in e.problems)
        elif isinstance(layer, ConvLayer):
            if _check_conv(label, layer, config["max_kernel_size"], problems):
                layers.append(layer)
        else:
            problems.append(f"{label}: a layer is an AttentionLayer or a ConvLayer, got {type(layer).__name__}")
    if problems:
        raise GenomeError(problems)
    return replace(genome, layers=tuple(layers), config=config)


def _check_conv(label: str, layer: ConvLayer, limit: int, problems: list[str]) -> bool:
    size = layer.kernel_size
    if not isinstance(size, int) or isinstance(size, bool) or size % 2 == 0 or not 1 <= size <= limit:
        problems.append(f"{label}: bad conv kernel size {_dumps(size)}: must be an odd integer in 1..{limit}")
        return False
    if layer.variant not in CONV_VARIANTS:
        problems.append(f"{label}: unknown conv variant {_dumps(layer.variant)} (known: {', '.join(CONV_VARIANTS)})")
        return False
    return True


def _dumps(value) -> str:
    """A value as JSON writes it (a value that JSON cannot hold, as Python writes it)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


# -- writing genomes -------------------------------------------------------------------


def attention_to_json(genome: AttentionGenome, form: str = "graph") -> dict:
    """The file form of an attention genome ("graph" with nodes, or "expr")."""
    out: dict = {}
    if genome.name is not None:
        out["name"] = genome.name
    out["inputs"] = list(genome.inputs)
    if form == "expr":
        out["expr"] = to_expr(genome)
    else:
        out["nodes"] = [{"id": n.id, "op": n.op, "args": list(n.args)} for n in genome.nodes]
        out["output"] = genome.output
    if genome.causal:
        out["causal"] = True
    if genome.notes is not None:
        out["notes"] = genome.notes
    return out


def genome_to_json(genome: Genome, form: str = "graph") -> dict:
    if isinstance(genome, AttentionGenome):
        return attention_to_json(genome, form)
    out: dict = {}
    if genome.name is not None:
        out["name"] = genome.name
    if genome.notes is not None:
        out["notes"] = genome.notes
    out["config"] = {k: v for k, v in genome.config.items() if DEFAULT_CONFIG[k] != v}
    out["layers"] = [
        {"type": "attention", "graph": attention_to_json(layer.graph, form)}
        if isinstance(layer, AttentionLayer)
        else {"type": "conv", "kernel_size": layer.kernel_size, **({"variant": layer.variant} if layer.variant != "light" else {})}
        for layer in genome.layers
    ]
    return out


def to_expr(genome: AttentionGenome) -> str:
    """The expression form (a tree: shared nodes are written out at each use). Raises
    GenomeError when sharing would make the tree too large to write out."""
    by_id = {n.id: n for n in genome.nodes}
    tree_size: dict[str, int] = {}
    for n in genome.nodes:  # operands first, so sizes are known when needed
        tree_size[n.id] = 1 + sum(tree_size.get(a, 1) for a in n.args)
    if tree_size.get(genome.output, 1) > MAX_EXPR_NODES:
        raise GenomeError(f"the expression form would have {tree_size[genome.output]} nodes; use the graph form")
    if genome.output in by_id:
        return _subexpression(by_id[genome.output], by_id)
    return genome.output
