"""Reading SASS and TTGIR (codegen/sass.py): the main loop, its counts and the dots'
duplication, on small hand-written listings in nvdisasm's and Triton's formats, and on
one real kernel compiled for sm_90."""

import json
import os
import subprocess
import sys

import pytest

from genomec.codegen import sass

# Two loops nest (.L_x_0 around .L_x_1); .L_x_2 holds an mma.sync; .L_x_3 is the exit trap.
LISTING = """\
	.section	.text.kernel,"ax",@progbits
kernel:
.text.kernel:
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   S2R R0, SR_TID.X ;
.L_x_0:
        /*0020*/                   LDGSTS.E.BYPASS.128 [R2], desc[UR4][R4.64] ;
        /*0030*/                   LDGDEPBAR ;
.L_x_1:
        /*0040*/                   WARPGROUP.ARRIVE ;
        /*0050*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], RZ, !UPT ;
        /*0060*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR12], R24, gsb0 ;
        /*0070*/                   MUFU.EX2 R5, R6 ;
        /*0080*/                   MUFU.EX2 R7, R8 ;
        /*0090*/                   LDS.128 R8, [R3] ;
        /*00a0*/              @!P1 LDG.E.U16 R9, desc[UR4][R10.64] ;
        /*00b0*/                   NOP ;
        /*00c0*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*00d0*/              @!P0 BRA `(.L_x_1) ;
        /*00e0*/                   IADD3 R1, R1, 0x1, RZ ;
        /*00f0*/               @P1 BRA `(.L_x_0) ;
.L_x_2:
        /*0100*/                   FADD R1, R1, R2 ;
        /*0110*/                   HMMA.16816.F32.BF16 R12, R4, R8, R12 ;
        /*0120*/               @P2 BRA `(.L_x_2) ;
        /*0130*/                   EXIT ;
.L_x_3:
        /*0140*/                   BRA `(.L_x_3);
"""


def test_main_loop_is_the_innermost_loop_with_the_most_mma_work():
    listing = sass.parse_sass(LISTING)
    assert len(listing.instructions) == 21  # NOP included: it is in the listing, only counts leave it out
    assert [loop.label for loop in sass.loops(listing)] == [".L_x_1", ".L_x_0", ".L_x_2", ".L_x_3"]
    assert [loop.label for loop in sass.mma_loops(listing)] == [".L_x_1", ".L_x_2"]  # .L_x_0 holds .L_x_1
    assert sass.main_loop(listing).label == ".L_x_1"  # 2 x 64*64*16 / 128 per thread against 16*8*16 / 32


def test_counts_of_one_iteration():
    counts = sass.count(sass.main_loop(sass.parse_sass(LISTING)).instructions)
    assert counts.instructions == 9  # the NOP left out, the branch in
    assert counts.mufu == {"EX2": 2}
    assert counts.wgmma == {"64x64x16.F32.BF16": 2} and counts.mma_sync == {}
    assert counts.loads == {"LDS.128": 1, "LDG.U16": 1} and counts.loads_of("LDG") == 1
    assert counts.barriers == 1
    assert counts.mma_macs_per_thread == 2 * 64 * 64 * 16 / 128


def test_mma_shapes():
    assert sass.mma_shape("HGMMA.64x32x16.F32.BF16") == (64, 32, 16)
    assert sass.mma_shape("HMMA.16816.F32.BF16") == (16, 8, 16)
    assert sass.mma_shape("HMMA.1688.F32.TF32") == (16, 8, 8)


TTGIR = """\
#mma = #ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [8, 1], instrShape = [16, 64, 16]}>
#mma1 = #ttg.nvidia_mma<{versionMajor = 2, versionMinor = 0, warpsPerCTA = [1, 8], instrShape = [16, 8]}>
module attributes {"ttg.num-warps" = 8 : i32} {
  tt.func public @kernel(%arg0: !tt.ptr<bf16> {tt.divisibility = 16 : i32}) attributes {noinline = false} {
    %s = ttng.warp_group_dot %a, %b, %cst : !ttg.memdesc<64x32xbf16, #shared, #smem> * !ttg.memdesc<32x64xbf16, #shared1, #smem> -> tensor<64x64xf32, #mma> loc(#loc1)
    %acc:2 = scf.for %i = %c0 to %n step %c64 iter_args(%x = %cst, %y = %cst) -> (tensor<64x64xf32, #mma>, f32)  : i32 {
      %t = ttng.warp_group_dot %a, %b, %cst {inputPrecision = 0 : i32} : !ttg.memdesc<64x64xbf16, #shared, #smem> * !ttg.memdesc<64x64xbf16, #shared1, #smem> -> tensor<64x64xf32, #mma> loc(#loc2)
      %m = "tt.reduce"(%t) <{axis = 1 : i32}> ({
      ^bb0(%u: f32 loc(#loc3), %v: f32 loc(#loc3)):
        %r = arith.maxnumf %u, %v : f32 loc(#loc3)
        tt.reduce.return %r : f32 loc(#loc3)
      }) : (tensor<64x64xf32, #mma>) -> tensor<64xf32, #ttg.slice<{dim = 1, parent = #mma}>> loc(#loc3)
      %w = scf.if %c -> (tensor<16x16xf32, #mma1>) {
        %d = tt.dot %p, %q, %z : tensor<16x64xbf16, #ttg.dot_op<{opIdx = 0, parent = #mma1, kWidth = 4}>> * tensor<64x16xbf16, #ttg.dot_op<{opIdx = 1, parent = #mma1, kWidth = 4}>> -> tensor<16x16xf32, #mma1> loc(#loc4)
        scf.yield %d : tensor<16x16xf32, #mma1> loc(#loc4)
      } else {
        scf.yield %z : tensor<16x16xf32, #mma1> loc(#loc4)
      } loc(#loc4)
      scf.yield %t, %f : tensor<64x64xf32, #mma>, f32 loc(#loc5)
    } {tt.num_stages = 2 : i32} loc(#loc5)
    tt.return loc(#loc6)
  } loc(#loc7)
} loc(#loc)
"""


def test_ttgir_dots_of_a_loop_and_their_duplication():
    (dots,) = sass.ttgir_loop_dots(TTGIR)  # the dot before the loop is not the loop's
    scores, small = dots
    assert (scores.m, scores.n, scores.k, scores.version, scores.warps) == (64, 64, 64, 3, (8, 1))
    assert scores.duplication == 2  # 8 warps x 16 rows cover 128 rows of 64
    assert (small.m, small.n, small.k, small.version) == (16, 16, 64, 2)
    assert small.duplication == 4  # 8 warps x 8 columns cover 64 columns of 16
    assert sass.main_loop_dots(TTGIR) == dots


def test_kernel_report_normalises_per_score_element():
    report = sass.kernel_report(LISTING, TTGIR, block_m=64, block_n=64, num_warps=4)
    loop = report["main_loop"]
    assert report["mma_loops"] == 2
    assert loop["instructions"] == 9 and loop["instructions_per_element"] == round(9 * 128 / (64 * 64), 2)
    assert loop["mufu_per_element"] == round(2 * 128 / (64 * 64), 3)
    assert loop["score_duplication"] == 2
    # issued: 2 HGMMA 64x64x16 per warpgroup (one warpgroup); the loop's dots: 64*64*64 + 16*16*64
    assert loop["mma_work_ratio"] == round(2 * 64 * 64 * 16 / (64 * 64 * 64 + 16 * 16 * 64), 3)
    assert loop["unroll"] == 1  # no TTGIR loop's work divides the SASS loop's
    assert sass.kernel_report("", "", 64, 64, 4) == {"main_loop": None, "mma_loops": 0, "wgmma_anywhere": 0, "mma_sync_anywhere": 0}
    assert (report["wgmma_anywhere"], report["mma_sync_anywhere"]) == (2, 1)  # .L_x_2's mma.sync is in no main loop, but it is there


def test_unroll_factor():
    assert sass.unroll_factor(400, [100, 400]) == (1, 1)  # the smallest whole ratio
    assert sass.unroll_factor(300, [100]) == (3, 0)
    assert sass.unroll_factor(150, [100]) == (1, None)


# One iteration of this loop is one 64x64x16 dot on one warpgroup, without duplication: the
# listing's main loop, with two HGMMA 64x64x16, is two iterations (ptxas unrolled it).
ONE_DOT = """\
#mma = #ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [4, 1], instrShape = [16, 64, 16]}>
module attributes {"ttg.num-warps" = 4 : i32} {
  tt.func public @kernel() attributes {noinline = false} {
    %acc = scf.for %i = %c0 to %n step %c64 iter_args(%x = %cst) -> (tensor<64x64xf32, #mma>)  : i32 {
      %t = ttng.warp_group_dot %a, %b, %x : !ttg.memdesc<64x16xbf16, #shared, #smem> * !ttg.memdesc<16x64xbf16, #shared1, #smem> -> tensor<64x64xf32, #mma>
      scf.yield %t : tensor<64x64xf32, #mma>
    }
    tt.return
  }
}
"""


def test_an_unrolled_loop_counts_per_iteration():
    loop = sass.kernel_report(LISTING, ONE_DOT, block_m=64, block_n=64, num_warps=4)["main_loop"]
    assert loop["unroll"] == 2
    assert loop["instructions"] == 4.5 and loop["mufu"] == {"EX2": 1} and loop["wgmma"] == {"64x64x16.F32.BF16": 1}
    assert loop["loads"] == {"LDS.128": 0.5, "LDG.U16": 0.5}
    assert loop["mma_work_ratio"] == 1 and loop["score_duplication"] == 1


# A pass of the generated kernels: a pipelined loop over the whole blocks, then an unpipelined
# one (`tt.num_stages = 1`) over the few blocks a mask cuts, with the same dots; the second
# runs once or twice per program.
TWO_LOOPS = """\
#mma = #ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [4, 1], instrShape = [16, 64, 16]}>
module attributes {"ttg.num-warps" = 4 : i32} {
  tt.func public @kernel() attributes {noinline = false} {
    %a = scf.for %i = %c0 to %n step %c64 iter_args(%x = %cst) -> (tensor<64x64xf32, #mma>)  : i32 {
      %t = ttng.warp_group_dot %a, %b, %x : !ttg.memdesc<64x32xbf16, #shared, #smem> * !ttg.memdesc<32x64xbf16, #shared1, #smem> -> tensor<64x64xf32, #mma>
      scf.yield %t : tensor<64x64xf32, #mma>
    }
    %b = scf.for %i = %n to %m step %c64 iter_args(%x = %a) -> (tensor<64x64xf32, #mma>)  : i32 {
      %t = ttng.warp_group_dot %a, %b, %x : !ttg.memdesc<64x32xbf16, #shared, #smem> * !ttg.memdesc<32x64xbf16, #shared1, #smem> -> tensor<64x64xf32, #mma>
      scf.yield %t : tensor<64x64xf32, #mma>
    } {tt.num_stages = 1 : i32}
    tt.return
  }
}
"""
TWO_LOOPS_LISTING = """\
kernel:
.L_x_0:
        /*0000*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], RZ, !UPT ;
        /*0010*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR12], R24, gsb0 ;
        /*0020*/                   MUFU.EX2 R5, R6 ;
        /*0030*/               @P0 BRA `(.L_x_0) ;
.L_x_1:
        /*0040*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], RZ, !UPT ;
        /*0050*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR12], R24, gsb0 ;
        /*0060*/                   FSEL R7, R7, -INF, P1 ;
        /*0070*/                   FSEL R8, R8, -INF, P1 ;
        /*0080*/                   MUFU.EX2 R5, R6 ;
        /*0090*/               @P1 BRA `(.L_x_1) ;
        /*00a0*/                   EXIT ;
"""


def test_unpipelined_loops_count_in_neither_figure():
    assert sass.ttgir_loops(TWO_LOOPS) == [(sass.ttgir_loop_dots(TWO_LOOPS)[0], False), (sass.ttgir_loop_dots(TWO_LOOPS)[1], True)]
    report = sass.kernel_report(TWO_LOOPS_LISTING, TWO_LOOPS, block_m=64, block_n=64, num_warps=4)
    assert report["mma_loops"] == 1 and report["main_loop"]["instructions"] == 4  # the first loop's, not the masked one's 6
    assert report["instructions_per_element_all_loops"] == report["main_loop"]["instructions_per_element"]
    assert report["wgmma_anywhere"] == 4 and report["mma_sync_anywhere"] == 0


# The reference's forward compiled for sm_90 in a process that compiles (this one may
# interpret): its main loop has the two products on wgmma and one ex2 per score.
REAL = """
import json
from genomec.codegen.aot import compile_kernel
from genomec.codegen.sass import disassemble, kernel_report
from genomec.codegen.tiles import TileConfig
from genomec.runtime import flash_reference as ref
tiles = TileConfig(128, 64, 4, 3)
name = "flash_forward"
compiled, resources = compile_kernel(ref.flash_forward, ref.signature(name, "bf16"), ref.constants(name, "bf16", 64, tiles, True),
                                     tiles.launch_options(), 90)
print(json.dumps(dict(registers=resources.registers, spills=resources.spills,
                      **kernel_report(disassemble(compiled.asm["cubin"]), compiled.asm["ttgir"], 128, 64, 4))))
"""


def test_real_kernel_main_loop():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    child = subprocess.run([sys.executable, "-c", REAL], capture_output=True, text=True, env=env, timeout=600)
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    loop = report["main_loop"]
    assert report["spills"] == 0 and 0 < report["registers"] <= 255
    assert report["mma_loops"] == 1 and loop["mma_sync"] == {}
    assert sum(loop["wgmma"].values()) > 0 and all(shape.startswith("64x") for shape in loop["wgmma"])
    # one ex2 per score a thread holds (128 x 64 over 128 threads), a few more for the rescale
    assert 64 <= loop["mufu"]["EX2"] <= 64 + 8
    assert loop["score_duplication"] == 1 and loop["mma_work_ratio"] == 1
    assert sum(n for name, n in loop["loads"].items() if name.startswith("LDGSTS")) > 0  # K and V by cp.async
