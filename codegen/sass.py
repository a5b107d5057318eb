"""Reading a compiled kernel without running it: its SASS (the GPU's own instructions, from
`nvdisasm` on the cubin; the binary ships in Triton's wheel) and the dots of its Triton GPU
IR (TTGIR), for the static kernel benchmark (`genomec bench --static`).

The main loop is where a fused attention kernel spends its time: the innermost loop (a
backward branch to a label before it) that holds matrix-multiply instructions (HGMMA,
Hopper's `wgmma`, or HMMA, `mma.sync`); when several do (one pass over the keys per row
statistic), the one with the most multiply-accumulate work per iteration. Its counts are
static: every instruction between the label and the branch once (a path the branch skips
counts too), NOPs left out, which is one iteration's issue slots per thread when nothing
is skipped.
ptxas unrolls some loops (by 4, the reference's unmasked ones): such a loop's counts are
divided by how many iterations of the Triton loop one pass does (`unroll_factor`).

Per score element: a count `c` of one iteration, for a tile of BLOCK_M x BLOCK_N score
elements and `threads` threads, is `c * threads / (BLOCK_M * BLOCK_N)`: the instructions
(thread-issues) spent on each score element, the same for any warp count when no work is
duplicated.

Duplication: a dot's layout (TTGIR `#ttg.nvidia_mma`) places `warpsPerCTA` warps over its
result, each covering `instrShape` (16 rows; 8 columns for `mma.sync`, N for `wgmma`);
when that covers more than the result (too few rows for the warps, say), warps compute the
same elements: the duplication is covered / needed. The SASS says the same from the other
side: MMA work issued per CTA (an HGMMA m x n x k per warpgroup, an HMMA per warp) over the
work of the loop's dots.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# -- the listing -------------------------------------------------------------------------

_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(?P<body>.*?)\s*;?\s*(?:/\*.*\*/)?\s*$")
_LABEL = re.compile(r"^(\.L_x_\d+|\.L_\w+):")
_TARGET = re.compile(r"`\((\.L_\w+)\)")
_PREDICATE = re.compile(r"^@!?U?P[T0-9]+\s+")

MMA_OPS = ("HGMMA", "HMMA")
# Loads by kind: global (LDG), global to shared by cp.async (LDGSTS), shared (LDS),
# shared matrix fragments (LDSM, ldmatrix), tensor-memory-accelerator copies (UTMALDG).
LOAD_OPS = ("LDG", "LDGSTS", "LDS", "LDSM", "UTMALDG")
STORE_OPS = ("STG", "STS", "RED", "ATOM", "ATOMS", "UTMASTG")
# the shapes of mma.sync, by the name SASS gives them (m16n8k16 is HMMA.16816)
HMMA_SHAPES = {"16816": (16, 8, 16), "1688": (16, 8, 8), "1684": (16, 8, 4), "884": (8, 8, 4)}


@dataclass(frozen=True)
class Instruction:
    offset: int
    opcode: str  # with its modifiers: "HGMMA.64x32x16.F32.BF16", "LDG.E.128"
    text: str  # the whole instruction, predicate and operands

    @property
    def op(self) -> str:
        return self.opcode.split(".")[0]

    @property
    def target(self) -> str | None:
        match = _TARGET.search(self.text)
        return match.group(1) if match else None


@dataclass(frozen=True)
class Listing:
    instructions: tuple[Instruction, ...]
    labels: dict  # label -> index of the instruction after it


def parse_sass(text: str) -> Listing:
    """The instructions and labels of `nvdisasm` output (of a cubin with one function, as
    Triton's are)."""
    instructions, labels = [], {}
    for line in text.splitlines():
        label = _LABEL.match(line.strip())
        if label:
            labels[label.group(1)] = len(instructions)
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        body = _PREDICATE.sub("", match.group("body").strip())
        if not body:
            continue
        instructions.append(Instruction(int(match.group(1), 16), body.split()[0], match.group("body").strip()))
    return Listing(tuple(instructions), labels)


def nvdisasm_path() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"


def disassemble(cubin: bytes) -> str:
    """`nvdisasm -c` of a cubin: the code, with branch targets as labels."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        try:
            return subprocess.run([str(nvdisasm_path()), "-c", f.name], capture_output=True, text=True, check=True, timeout=120).stdout
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"nvdisasm failed: {e.stderr.strip()[-2000:]}") from None


# -- loops -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Loop:
    label: str
    first: int  # index of the first instruction after the label
    last: int  # index of the backward branch
    instructions: tuple[Instruction, ...]

    def contains(self, other: "Loop") -> bool:
        return self.first <= other.first and other.last <= self.last and self != other


def loops(listing: Listing) -> list[Loop]:
    """Every loop of the listing: a branch to a label at or before it, with the body between."""
    found = []
    for i, ins in enumerate(listing.instructions):
        target = ins.target
        if ins.op == "BRA" and target in listing.labels and listing.labels[target] <= i:
            first = listing.labels[target]
            found.append(Loop(target, first, i, listing.instructions[first : i + 1]))
    return found


def mma_shape(opcode: str) -> tuple[int, int, int] | None:
    """(m, n, k) of an HGMMA ("HGMMA.64x32x16.F32.BF16") or HMMA ("HMMA.16816.F32.BF16")."""
    parts = opcode.split(".")
    if parts[0] == "HGMMA":
        match = re.fullmatch(r"(\d+)x(\d+)x(\d+)", parts[1])
        return tuple(map(int, match.groups())) if match else None
    if parts[0] == "HMMA":
        return HMMA_SHAPES.get(parts[1])
    return None


def mma_macs_per_thread(instructions) -> float:
    """Multiply-accumulates the MMA instructions do, per thread: an HGMMA is one per
    warpgroup (128 threads), an HMMA one per warp (32)."""
    total = 0.0
    for ins in instructions:
        shape = mma_shape(ins.opcode) if ins.op in MMA_OPS else None
        if shape:
            m, n, k = shape
            total += m * n * k / (128 if ins.op == "HGMMA" else 32)
    return total


def mma_loops(listing: Listing) -> list[Loop]:
    """The innermost loops that hold MMA instructions (no loop inside them holds any),
    in listing order."""
    with_mma = [loop for loop in loops(listing) if any(i.op in MMA_OPS for i in loop.instructions)]
    return [loop for loop in with_mma if not any(loop.contains(other) for other in with_mma)]


def main_loop(listing: Listing) -> Loop | None:
    """The MMA loop with the most multiply-accumulate work per pass (the first of equals);
    None for a kernel without one. (`kernel_report` also knows the IR, and compares work
    per iteration of an unrolled loop.)"""
    candidates = mma_loops(listing)
    if not candidates:
        return None
    return max(candidates, key=lambda loop: (mma_macs_per_thread(loop.instructions), -loop.first))


@dataclass
class LoopCounts:
    """The static counts of one iteration of a loop, per thread."""

    instructions: int
    mufu: dict = field(default_factory=dict)  # "EX2" -> count
    wgmma: dict = field(default_factory=dict)  # "64x32x16.F32.BF16" -> count
    mma_sync: dict = field(default_factory=dict)  # "16816.F32.BF16" -> count
    loads: dict = field(default_factory=dict)  # "LDGSTS.128" -> count
    stores: dict = field(default_factory=dict)
    barriers: int = 0  # BAR.SYNC and friends: CTA-wide waits
    mma_macs_per_thread: float = 0.0
    opcodes: dict = field(default_factory=dict)  # every op -> count

    @property
    def mufu_total(self) -> int:
        return sum(self.mufu.values())

    def loads_of(self, kind: str) -> int:
        return sum(n for name, n in self.loads.items() if name.split(".")[0] == kind)


def _width(opcode: str) -> str:
    """A load or store with its access size, which says how wide it is (U8, U16, 64, 128;
    none: 32 bits): "LDG.128", "LDG.U16", "LDS"; LDSM keeps its fragment shape (LDSM.16.M88.4)."""
    parts = opcode.split(".")
    if parts[0] == "LDSM":
        return opcode
    return ".".join([parts[0], *(p for p in parts[1:] if p in ("U8", "S8", "U16", "S16", "64", "128"))])


def count(instructions) -> LoopCounts:
    instructions = [i for i in instructions if i.op != "NOP"]
    counts = LoopCounts(instructions=len(instructions))
    mufu, wgmma, mma_sync, loads, stores, ops = Counter(), Counter(), Counter(), Counter(), Counter(), Counter()
    for ins in instructions:
        ops[ins.op] += 1
        rest = ins.opcode.split(".", 1)[1] if "." in ins.opcode else ""
        if ins.op == "MUFU":
            mufu[rest] += 1
        elif ins.op == "HGMMA":
            wgmma[rest] += 1
        elif ins.op == "HMMA":
            mma_sync[rest] += 1
        elif ins.op in LOAD_OPS:
            loads[_width(ins.opcode)] += 1
        elif ins.op in STORE_OPS:
            stores[_width(ins.opcode)] += 1
        elif ins.op == "BAR":
            counts.barriers += 1
    counts.mufu, counts.wgmma, counts.mma_sync = dict(mufu), dict(wgmma), dict(mma_sync)
    counts.loads, counts.stores, counts.opcodes = dict(loads), dict(stores), dict(ops.most_common())
    counts.mma_macs_per_thread = mma_macs_per_thread(instructions)
    return counts


# -- Triton GPU IR: the dots of a loop and their layouts ---------------------------------

_MMA_LAYOUT = re.compile(r"^#(\w+)\s*=\s*#ttg\.nvidia_mma<\{(.*)\}>")
_DOT = re.compile(r"\b(tt\.dot|ttng\.warp_group_dot)\b")
_OPERAND = re.compile(r"(?:tensor|!ttg\.memdesc)<(\d+)x(\d+)x")
_RESULT = re.compile(r"->\s*tensor<(\d+)x(\d+)x\w+,\s*#(\w+)")


@dataclass(frozen=True)
class Dot:
    m: int
    n: int
    k: int
    version: int | None  # 2: mma.sync, 3: wgmma; None: not a tensor-core layout
    warps: tuple[int, int] | None  # warpsPerCTA over (rows, columns)
    instr: tuple[int, ...] | None  # instrShape

    @property
    def macs(self) -> int:
        return self.m * self.n * self.k

    @property
    def duplication(self) -> float:
        """How many warps compute each result element: the rows and columns the layout
        covers (warps x instruction shape) over the result's, where that is more than 1."""
        if not self.warps or not self.instr:
            return 1.0
        rows, cols = self.warps[0] * self.instr[0], self.warps[1] * self.instr[1]
        return max(1.0, rows / self.m) * max(1.0, cols / self.n)


def _mma_layouts(ttgir: str) -> dict:
    layouts = {}
    for line in ttgir.splitlines():
        match = _MMA_LAYOUT.match(line.strip())
        if match:
            fields = match.group(2)
            version = re.search(r"versionMajor = (\d+)", fields)
            warps = re.search(r"warpsPerCTA = \[(\d+), (\d+)\]", fields)
            instr = re.search(r"instrShape = \[([\d, ]+)\]", fields)
            layouts[match.group(1)] = (
                int(version.group(1)) if version else None,
                tuple(map(int, warps.groups())) if warps else None,
                tuple(int(x) for x in instr.group(1).split(",")) if instr else None,
            )
    return layouts


def ttgir_loops(ttgir: str) -> list[tuple[list[Dot], bool]]:
    """The dots of each innermost `scf.for` that holds any, in order, each with whether the
    loop runs unpipelined (`tt.num_stages = 1`: the generated kernels' loop over the few
    blocks a mask cuts, after the loop over the whole blocks)."""
    layouts = _mma_layouts(ttgir)
    stack = []  # the open regions, innermost last
    found = []
    for raw in ttgir.splitlines():
        line = re.sub(r"\s*loc\(.*\)\s*$", "", raw.strip())
        for _ in range(len(line) - len(line.lstrip("}"))):
            if not stack:
                break
            region = stack.pop()
            if region["for"] and region["dots"] and not region["inner"]:
                found.append((region["dots"], "tt.num_stages = 1 :" in line))
            if stack and region["for"]:
                stack[-1]["inner"] |= bool(region["dots"]) or region["inner"]
            elif stack:  # a region inside a loop (scf.if, a reduction's body): its dots are the loop's
                stack[-1]["dots"] += region["dots"]
                stack[-1]["inner"] |= region["inner"]
        if _DOT.search(line) and "->" in line and stack:
            operand, result = _OPERAND.search(line), _RESULT.search(line)
            if operand and result:
                version, warps, instr = layouts.get(result.group(3), (None, None, None))
                stack[-1]["dots"].append(Dot(int(result.group(1)), int(result.group(2)), int(operand.group(2)), version, warps, instr))
        if line.endswith("{"):
            stack.append({"for": bool(re.match(r"(%[\w:#]+\s*=\s*)?scf\.for\b", line)), "dots": [], "inner": False})
    return found


def ttgir_loop_dots(ttgir: str) -> list[list[Dot]]:
    """The dots of each innermost `scf.for` that holds any, in order."""
    return [dots for dots, _ in ttgir_loops(ttgir)]


def main_loop_dots(ttgir: str) -> list[Dot]:
    """The dots of the innermost loop with the most multiply-accumulate work ([] if none);
    of equals, a pipelined one (the whole blocks') before an unpipelined one."""
    loops_ = [dots for dots, edge in ttgir_loops(ttgir) if not edge] or ttgir_loop_dots(ttgir)
    return max(loops_, key=lambda dots: sum(d.macs for d in dots)) if loops_ else []


# -- one kernel --------------------------------------------------------------------------


def unroll_factor(issued: float, loop_work: list[float]) -> tuple[int, int | None]:
    """How many iterations of a Triton loop one pass through a SASS loop does (ptxas unrolls
    simple loops, such as ones without masks, by 2 or 4), and which loop: the MMA work the
    SASS loop issues per CTA over the work one iteration of a TTGIR loop issues (its dots,
    each times its duplication), when that is a whole number; the smallest such, else 1."""
    best = (1, None)
    for index, work in enumerate(loop_work):
        ratio = issued / work if work else 0
        factor = round(ratio)
        if factor >= 1 and abs(ratio - factor) <= 0.02 * factor and (best[1] is None or factor < best[0]):
            best = (factor, index)
    return best


def _scaled(counts: dict, unroll: int) -> dict:
    return {name: (n // unroll if n % unroll == 0 else round(n / unroll, 2)) for name, n in counts.items()}


def kernel_report(sass: str, ttgir: str, block_m: int, block_n: int, num_warps: int) -> dict:
    """The main-loop figures of one compiled kernel (SASS text and TTGIR), as JSON: the
    counts of one iteration per thread and per score element of a BLOCK_M x BLOCK_N tile,
    the MMA instructions and their shapes, loads by kind, the loop's dots with their
    duplication, and the same per element over every MMA loop (all passes). An unrolled
    SASS loop counts per iteration of the Triton loop (`unroll_factor`); the main loop is
    the one with the most MMA work per such iteration. A pass of the generated kernels is
    two loops, over its whole blocks and then, unpipelined, over the few a mask cuts
    (`ttgir_loops`): the second runs once or twice per program, and counts in neither the
    main loop nor all loops' figure. SASS loops are matched to TTGIR loops in order when
    there are as many of each, else by their MMA work."""
    threads = 32 * num_warps
    per_element = threads / (block_m * block_n)
    ir_loops = ttgir_loops(ttgir)
    ir_work = [sum(d.macs * d.duplication for d in dots) for dots, _ in ir_loops]
    iterations = []  # (SASS loop, unroll, its TTGIR loop's dots, unpipelined), in listing order
    listing = parse_sass(sass)
    anywhere = count(listing.instructions)  # every instruction of the kernel, loops or not
    everywhere = {"wgmma_anywhere": sum(anywhere.wgmma.values()), "mma_sync_anywhere": sum(anywhere.mma_sync.values())}
    sass_loops = mma_loops(listing)
    for position, loop in enumerate(sass_loops):
        issued = mma_macs_per_thread(loop.instructions) * threads
        if len(sass_loops) == len(ir_loops):
            unroll, index = unroll_factor(issued, [ir_work[position]])
            index = position if index is not None else None
        else:
            unroll, index = unroll_factor(issued, ir_work)
        edge = index is not None and ir_loops[index][1]
        iterations.append((loop, unroll, ir_loops[index][0] if index is not None else None, edge))
    counted = [it for it in iterations if not it[3]] or iterations
    if not counted:
        return {"main_loop": None, "mma_loops": 0, **everywhere}
    loop, unroll, dots, _ = max(counted, key=lambda it: (mma_macs_per_thread(it[0].instructions) / it[1], -it[0].first))
    dots = dots if dots is not None else main_loop_dots(ttgir)
    counts = count(loop.instructions)
    instructions = counts.instructions / unroll
    useful = sum(d.macs for d in dots)
    score = [d for d in dots if {d.m, d.n} == {block_m, block_n}][:1]  # the first: q k^T in every attention kernel
    return {
        "mma_loops": len(counted),
        "main_loop": {
            "unroll": unroll,
            "instructions": round(instructions, 2),
            "instructions_per_element": round(instructions * per_element, 2),
            "mufu": _scaled(counts.mufu, unroll),
            "mufu_per_element": round(counts.mufu_total / unroll * per_element, 3),
            "wgmma": _scaled(counts.wgmma, unroll),
            "mma_sync": _scaled(counts.mma_sync, unroll),
            "loads": _scaled(counts.loads, unroll),
            "stores": _scaled(counts.stores, unroll),
            "barriers": round(counts.barriers / unroll, 2),
            "dots": [{"m": d.m, "n": d.n, "k": d.k, "mma": {2: "mma.sync", 3: "wgmma"}.get(d.version, "none"),
                      "warps": list(d.warps) if d.warps else None, "duplication": d.duplication} for d in dots],
            "score_duplication": max((d.duplication for d in score), default=None),
            # MMA work the SASS issues per CTA and iteration over the work of the loop's dots (1: none duplicated)
            "mma_work_ratio": round(counts.mma_macs_per_thread / unroll * threads / useful, 3) if useful else None,
            "opcodes": _scaled(counts.opcodes, unroll),
        },
        "instructions_per_element_all_loops": round(sum(count(l.instructions).instructions / u for l, u, _, _ in counted) * per_element, 2),
        **everywhere,  # the kernel's MMA instructions in or out of loops: no mma.sync may be left anywhere
    }
