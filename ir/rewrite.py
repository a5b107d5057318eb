"""Declarative rewrite rules and the fixed-point driver that applies them.

A rule is two expressions in the genome's own syntax, `pattern -> replacement`, where
every bare name is a pattern variable (`neg(neg(x)) -> x`). A variable used twice must bind
the same node. Patterns over commutative ops match either operand order. An optional
precondition sees the bindings.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Union

from genomec.genome.ops import OPS

from .graph import INPUT_OP, IR, IRBuilder, IRError, rebuild

Pattern = Union[str, tuple]  # a variable name, or (op, *sub-patterns)

MAX_SWEEPS = 32  # a rule set that has not converged by then is looping
MAX_HITS_PER_NODE = 64


class RewriteLoop(IRError):
    """The rules keep rewriting: two of them undo each other."""


def parse_pattern(text: str) -> Pattern:
    tokens = re.findall(r"[A-Za-z_]\w*|[(),]", text)
    pos = 0

    def parse():
        nonlocal pos
        name = tokens[pos]
        pos += 1
        if pos < len(tokens) and tokens[pos] == "(":
            pos += 1
            args = [parse()]
            while tokens[pos] == ",":
                pos += 1
                args.append(parse())
            if tokens[pos] != ")":
                raise ValueError(f"bad pattern {text!r}")
            pos += 1
            if name not in OPS or len(args) != OPS[name].arity:
                raise ValueError(f"bad op {name!r} in pattern {text!r}")
            return (name, *args)
        return name

    pattern = parse()
    if pos != len(tokens):
        raise ValueError(f"bad pattern {text!r}")
    return pattern


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: Pattern
    replacement: Pattern
    when: Callable[[IRBuilder, dict], bool] | None = None

    def match(self, builder: IRBuilder, node_id: str) -> dict | None:
        return _match(self.pattern, node_id, builder, {})

    def apply(self, builder: IRBuilder, bindings: dict) -> str:
        return _instantiate(self.replacement, bindings, builder)


def rule(text: str, when=None) -> Rule:
    """`rule("neg(neg(x)) -> x")`."""
    lhs, rhs = (part.strip() for part in text.split("->"))
    return Rule(text, parse_pattern(lhs), parse_pattern(rhs), when)


def _match(pattern: Pattern, node_id: str, builder: IRBuilder, bindings: dict) -> dict | None:
    if isinstance(pattern, str):
        if pattern in bindings:
            return bindings if bindings[pattern] == node_id else None
        return {**bindings, pattern: node_id}
    node = builder.node(node_id)
    op, *subpatterns = pattern
    if node.op != op:
        return None
    orders = [node.operands]
    if OPS[op].commutative and node.operands[0] != node.operands[1]:
        orders.append(node.operands[::-1])
    for operands in orders:
        found = bindings
        for sub, operand in zip(subpatterns, operands):
            found = _match(sub, operand, builder, found)
            if found is None:
                break
        if found is not None:
            return found
    return None


def _instantiate(template: Pattern, bindings: dict, builder: IRBuilder) -> str:
    if isinstance(template, str):
        return bindings[template]
    op, *subtemplates = template
    return builder.add(op, [_instantiate(t, bindings, builder) for t in subtemplates])


def rewrite(ir: IR, rules: list[Rule], hits: Counter | None = None) -> IR:
    """Apply `rules` bottom-up, sweep after sweep, until none fires. Every rewrite must keep
    the node's shape; a rule set that does not converge raises RewriteLoop."""
    hits = Counter() if hits is None else hits
    for _ in range(MAX_SWEEPS):
        builder = IRBuilder(share=True)
        new: dict[str, str] = {}
        changed = False
        for node_id, node in ir.nodes():
            if node.op == INPUT_OP:
                new[node_id] = builder.input(node.input)
                continue
            current = builder.add(node.op, (new[o] for o in node.operands))
            for _ in range(MAX_HITS_PER_NODE):
                for r in rules:
                    bindings = r.match(builder, current)
                    if bindings is not None and (r.when is None or r.when(builder, bindings)):
                        replaced = r.apply(builder, bindings)
                        if builder.node(replaced).shape != builder.node(current).shape:
                            raise IRError(f"rule {r.name!r} changed a shape")
                        hits[r.name] += 1
                        changed, current = True, replaced
                        break
                else:
                    break
            else:
                raise RewriteLoop(f"rules keep firing at one node: {hits.most_common(4)}")
            new[node_id] = current
        ir = rebuild(builder.finish(new[ir.output], ir.causal, ir.declared_inputs, ir.name))  # drops dead nodes
        if not changed:
            return ir
    raise RewriteLoop(f"rewriting did not converge in {MAX_SWEEPS} sweeps: {hits.most_common(4)}")
