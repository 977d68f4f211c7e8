"""The C micro-kernels (tvm_patch/codegen/tvmp_kernels.h) and the rewrites that call them: bit-exact with the
integer reference on the host and on the emulated Cortex-M4/M7 (DSP path), and the dot-product rewrite on
random shapes against TVM's own build."""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import ctypes
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tvm
import tvm_ffi
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tvm import te, tirx

from microtvm_projects.boards import get_board
from conftest import FIRMWARE_FIXTURES, run_test_firmware
from tvm_patch.codegen import emit_c
from tvm_patch.codegen.c_kernels import MICRO_KERNELS
from tvm_patch.codegen.window_blocks import MIN_WINDOW_PAIRS
from tvm_patch.codegen.widen_kernels import MAX_WIDE_BYTES
from tvm_patch.export.blocking import block_output_channels, block_pixels
from tvm_patch.export.schedule import lean_schedule
from tvm_patch.quant import (REQUANT_EXTERN, expand_extern_requantization, extern_requantization,
                             multiply_by_quantized_multiplier_ref, requantize_te)

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


@pytest.fixture(scope="module")
def requant_lib(tmp_path_factory) -> ctypes.CDLL:
    d = tmp_path_factory.mktemp("rq")
    (d / "rq.c").write_text(f'#include "{MICRO_KERNELS}"\n'
                            "void rq(const int32_t *a, const int32_t *m, const int32_t *s, int32_t *o, int n) {\n"
                            "  for (int i = 0; i < n; i++) o[i] = tvmp_requant(a[i], m[i], s[i]);\n}\n"
                            "void rq_rs(const int32_t *a, const int32_t *m, const int32_t *s, int32_t *o, int n) {\n"
                            "  for (int i = 0; i < n; i++) o[i] = tvmp_requant_rs(a[i], m[i], s[i]);\n}\n"
                            "void rq_narrow(const int32_t *a, const int32_t *m, const int32_t *s, int32_t *o, int n) {\n"
                            "  for (int i = 0; i < n; i++) o[i] = tvmp_requant_rs_narrow(a[i], m[i], s[i]);\n}\n"
                            "void rq_rbz(const int32_t *a, const int32_t *m, const int32_t *s, const int32_t *z, int32_t *o,"
                            " int n) {\n"
                            "  for (int i = 0; i < n; i++) o[i] = tvmp_requant_rbz(a[i], m[i], s[i], z[i]);\n}\n")
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-std=c99", "-shared", "-fPIC", str(d / "rq.c"), "-o",
                    str(d / "rq.so")], check=True)
    return ctypes.CDLL(str(d / "rq.so"))


def test_requant_equals_the_reference_on_the_host(requant_lib):
    rng = np.random.default_rng(7)
    n = 400_000
    acc = rng.integers(INT32_MIN, INT32_MAX + 1, n, dtype=np.int64)
    acc[::2] >>= rng.integers(0, 31, n // 2)
    mult = rng.integers(2**30, 2**31, n, dtype=np.int64)
    mult[::7] = rng.integers(INT32_MIN, INT32_MAX + 1, len(mult[::7]))
    shift = rng.integers(-31, 32, n, dtype=np.int64)
    edges = np.array([0, 1, -1, 127, -128, 2**30, -(2**30), INT32_MAX, INT32_MIN], dtype=np.int64)
    ea, em, es = np.meshgrid(edges, edges, np.arange(-31, 32), indexing="ij")
    acc, mult, shift = (np.concatenate([x, y.ravel()]).astype(np.int32) for x, y in ((acc, ea), (mult, em), (shift, es)))
    out = np.empty_like(acc)
    p = ctypes.POINTER(ctypes.c_int32)
    requant_lib.rq(acc.ctypes.data_as(p), mult.ctypes.data_as(p), shift.ctypes.data_as(p), out.ctypes.data_as(p),
                   len(acc))
    want = multiply_by_quantized_multiplier_ref(acc, mult, shift)
    np.testing.assert_array_equal(out, want)
    keep = shift <= 0  # tvmp_requant_rs: the export calls it only where every shift is <= 0
    acc, mult, shift, want = (np.ascontiguousarray(x[keep]) for x in (acc, mult, shift, want))
    out = np.empty_like(acc)
    requant_lib.rq_rs(acc.ctypes.data_as(p), mult.ctypes.data_as(p), shift.ctypes.data_as(p), out.ctypes.data_as(p),
                      len(acc))
    np.testing.assert_array_equal(out, want)
    keep = np.abs(acc.astype(np.int64)) < 2**30  # tvmp_requant_rs_narrow: where the export bounds the accumulator
    acc, mult, shift, want = (np.ascontiguousarray(x[keep]) for x in (acc, mult, shift, want))
    assert len(acc) > 100_000
    out = np.empty_like(acc)
    requant_lib.rq_narrow(acc.ctypes.data_as(p), mult.ctypes.data_as(p), shift.ctypes.data_as(p),
                          out.ctypes.data_as(p), len(acc))
    np.testing.assert_array_equal(out, want)
    # tvmp_requant_rbz (the output zero point in the rounding addend): where the export proves |acc| + 1 + |zp| 2^right
    # + 2^(right - 1) + 1 <= 2^31 - 1 (and the shift is in [-31, -1], the multiplier >= 0)
    zp = rng.integers(-128, 128, len(acc)).astype(np.int32)
    right = -shift.astype(np.int64)
    keep = (right >= 1) & (np.abs(acc.astype(np.int64)) + 2 + np.abs(zp) * 2.0**right + 2.0 ** (right - 1) <= 2**31 - 1) \
        & (np.abs(2 * zp.astype(np.int64) + 1) * 2.0**right <= 2**31 - 1) & (mult >= 0)
    acc, mult, shift, zp, want = (np.ascontiguousarray(x[keep]) for x in (acc, mult, shift, zp, want))
    assert len(acc) > 50_000 and (zp != 0).mean() > 0.9
    out = np.empty_like(acc)
    requant_lib.rq_rbz(acc.ctypes.data_as(p), mult.ctypes.data_as(p), shift.ctypes.data_as(p), zp.ctypes.data_as(p),
                       out.ctypes.data_as(p), len(acc))
    np.testing.assert_array_equal(out, want.astype(np.int64) + zp)
    # a small negative acc whose high word rounds to 0 (the rounding's sign taken from acc, not from that word)
    n = 20_000
    acc, mult = rng.integers(-8, 0, n).astype(np.int32), rng.integers(0, 2**20, n).astype(np.int32)
    shift, zp = rng.integers(-20, 0, n).astype(np.int32), rng.integers(-128, 128, n).astype(np.int32)
    out = np.empty_like(acc)
    requant_lib.rq_rbz(acc.ctypes.data_as(p), mult.ctypes.data_as(p), shift.ctypes.data_as(p), zp.ctypes.data_as(p),
                       out.ctypes.data_as(p), n)
    np.testing.assert_array_equal(out, multiply_by_quantized_multiplier_ref(acc, mult, shift).astype(np.int64) + zp)


def _xorshift(state: int):
    while True:
        state ^= (state << 13) & 0xFFFFFFFF
        state ^= state >> 17
        state ^= (state << 5) & 0xFFFFFFFF
        yield state


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
                    reason="make setup installs arm-none-eabi-gcc and qemu-system-arm")
@pytest.mark.parametrize("key", ["f412", "f746"])
def test_micro_kernels_on_the_emulator(tmp_path, key):
    """The DSP path (SXTB16 + SMLAD, unaligned word loads; one and several weight rows) on Cortex-M4 and M7,
    against numpy."""
    elf, printed = run_test_firmware(FIRMWARE_FIXTURES / "micro_kernels.c", get_board(key), tmp_path)
    asm = subprocess.run(["arm-none-eabi-objdump", "-d", str(elf)], capture_output=True, text=True).stdout
    assert "smlad" in asm and "sxtb16" in asm  # the DSP path was compiled
    assert ("vminnm" in asm) == (get_board(key).core == "cortex-m7")  # tvmp_quant_s8's FPv5 form: M7 only
    lines = printed.splitlines()
    rq = [list(map(int, ln.split()[1:])) for ln in lines if ln.startswith("R ")]
    dots = [list(map(int, ln.split()[1:])) for ln in lines if ln.startswith("D ")]
    assert len(rq) == 400 and len(dots) == 200
    a, m, s, got, got_rs, got_narrow, got_rbz = (np.array(c, dtype=np.int64) for c in zip(*rq))
    np.testing.assert_array_equal(got, multiply_by_quantized_multiplier_ref(a, m, s))
    np.testing.assert_array_equal(got_rs, got)  # tvmp_requant_rs where shift <= 0
    np.testing.assert_array_equal(got_narrow, got)  # tvmp_requant_rs_narrow where also |acc| < 2^30 (SMMULR)
    np.testing.assert_array_equal(got_rbz, got)  # tvmp_requant_rbz - zp where its bounds hold
    assert (s <= 0).sum() > 200 and ((s <= 0) & (np.abs(a) < 2**30)).sum() > 100
    assert ((s <= -1) & (s >= -22) & (np.abs(a) < 2**29)).sum() > 50  # rows where the rbz bounds hold
    for n, _off, got, acc0, *pairs in dots:
        x = np.array(pairs[0::2], dtype=np.int64)
        w = np.array(pairs[1::2], dtype=np.int64)
        assert len(x) == n and got == acc0 + int(np.dot(x, w))
    blocked = [list(map(int, ln.split()[1:])) for ln in lines if ln.startswith("B ")]
    assert len(blocked) == 100
    one_pixel = [list(map(int, ln.split()[1:])) for ln in lines if ln.startswith("O ")]
    assert len(one_pixel) == 100 and sum(n4 >= 8 for _, n4, *_ in one_pixel) > 50
    for (rows, n, ws, *rest), (o_rows, n4, *o_got) in zip(blocked, one_pixel):
        got, acc0 = rest[:rows], rest[rows:2 * rows]
        a = np.array(rest[2 * rows:2 * rows + n], dtype=np.int64)
        w = np.array(rest[2 * rows + n:], dtype=np.int64).reshape(rows, ws)[:, :n]
        assert got == [acc0[j] + int(np.dot(a, w[j])) for j in range(rows)]
        # the pixel widened once (tvmp_widen_px1), int8 and widened weights (tvmp_dot_q15[w]_rows*)
        assert (o_rows, n4) == (rows, n & ~3)
        assert o_got == 2 * [acc0[j] + int(np.dot(a[:n4], w[j, :n4])) for j in range(rows)]
    pixels = [list(map(int, ln.split()[1:])) for ln in lines if ln.startswith("P ")]
    assert len(pixels) == 100
    widened = [list(map(int, ln.split()[1:])) for ln in lines if ln.startswith("Q ")]
    assert len(widened) == 100 and sum(n4 >= 8 for _, n4, *_ in widened) > 50
    fours = iter([list(map(int, ln.split()[1:])) for ln in lines if ln.startswith("E ")])
    assert {n4 % 16 for _, n4, *_ in widened} == {0, 4, 8, 12}  # every tail of the four-pixel kernel's loop
    for (rows, n, *rest), (q_rows, n4, *q_got) in zip(pixels, widened):
        got, acc0 = rest[:2 * rows], rest[2 * rows:4 * rows]
        a = np.array(rest[4 * rows:4 * rows + 2 * n], dtype=np.int64).reshape(2, n)
        w = np.array(rest[4 * rows + 2 * n:], dtype=np.int64).reshape(rows, n)
        assert got == [acc0[p * rows + j] + int(np.dot(a[p], w[j])) for p in range(2) for j in range(rows)]
        assert (q_rows, n4) == (rows, n & ~3)  # the widened pair (tvmp_widen_px2 + tvmp_dot_q15_px2_rows*)
        assert q_got == [acc0[p * rows + j] + int(np.dot(a[p, :n4], w[j, :n4])) for p in range(2) for j in range(rows)]
        # four pixels, the pair and it reversed (tvmp_dot_q15_px4_rows*: each int8 weight word extended once for four)
        e_rows, e_n4, *e_got = next(fours)
        assert (e_rows, e_n4) == (rows, n & ~3)
        assert e_got == [acc0[(p % 2) * rows + j] + int(np.dot(a[(0, 1, 1, 0)[p], :n4], w[j, :n4]))
                         for p in range(4) for j in range(rows)]
    assert next(fours, None) is None
    planes = [list(map(int, ln.split()[1:])) for ln in lines if ln.startswith("V ")]
    assert len(planes) == 100 and len({cs for _, cs, *_ in planes}) == 6
    for (rows, n, *rest), (n4, _cs, *words) in zip(pixels, planes):  # the widened words, from channel planes
        a = np.array(rest[4 * rows:4 * rows + 2 * n], dtype=np.int64).reshape(2, n)
        assert n4 == n & ~3 and words == _widened_words(a[:, :n4])
    windows = [list(map(int, ln.split()[1:])) for ln in lines if ln.startswith("W ")]
    assert len(windows) == 300
    wide = {(d, kw) for d, _sy, sx, _kh, kw, _wy, wx, *_ in windows if sx == wx == 1 and kw >= 4}
    assert {(d, kw) for d in (1, 2) for kw in range(4, 9)} <= wide  # tvmp_window2_s8's wide-row paths, every tail
    wide2 = iter([list(map(int, ln.split()[1:])) for ln in lines if ln.startswith("G ")])
    n_wide2 = set()
    for d, sy, sx, kh, kw, wy, wx, got0, got1, acc0, acc1, *rest in windows:
        if wx == 1 and kw % 2:  # the same windows on the widened weights (tvmp_window2_s8w)
            assert next(wide2) == [got0, got1]
            if sx == 1:
                n_wide2.add((d, kw))
        n_plane = (kh - 1) * sy + (kw - 1) * sx + d + 1
        plane, w = np.array(rest[:n_plane], dtype=np.int64), np.array(rest[n_plane:], dtype=np.int64)
        taps = [(ry * sy + rx * sx, ry * wy + rx * wx) for ry in range(kh) for rx in range(kw)]
        assert len(w) == (kh - 1) * wy + (kw - 1) * wx + 1
        assert [got0, got1] == [acc + sum(int(plane[o + p]) * int(w[q]) for p, q in taps) for o, acc in ((0, acc0), (d, acc1))]
    assert next(wide2, None) is None and {(d, kw) for d in (1, 2) for kw in (3, 5, 7)} <= n_wide2  # its SMLAD paths
    quads = [list(map(int, ln.split()[1:])) for ln in lines if ln.startswith("X ")]
    assert len(quads) == 200
    assert {(1, 5), (1, 7), (2, 7)} <= {(d, kw) for d, _sy, sx, _kh, kw, _wy, wx, *_ in quads
                                        if sx == wx == 1}  # tvmp_window4_s8's SMLAD paths
    wide = iter([list(map(int, ln.split()[1:])) for ln in lines if ln.startswith("Y ")])
    threes = [list(map(int, ln.split()[1:])) for ln in lines if ln.startswith("Z ")]
    assert len(threes) == 200
    n_wide = 0
    for (d, sy, sx, kh, kw, wy, wx, *rest), three in zip(quads, threes):
        got, acc0, rest = rest[:4], rest[4:8], rest[8:]
        assert three == got[:3]  # tvmp_window3_s8: the quad's first three windows (its SMLAD path: d = 2, 7 wide)
        if wx == 1 and kw % 4 == 3:  # the same windows on the widened weights (tvmp_window4_s8w)
            assert next(wide) == got
            n_wide += sx == 1 and kw == 7
        n_plane = (kh - 1) * sy + (kw - 1) * sx + 3 * d + 1
        plane, w = np.array(rest[:n_plane], dtype=np.int64), np.array(rest[n_plane:], dtype=np.int64)
        taps = [(ry * sy + rx * sx, ry * wy + rx * wx) for ry in range(kh) for rx in range(kw)]
        assert len(w) == (kh - 1) * wy + (kw - 1) * wx + 1
        assert got == [acc0[k] + sum(int(plane[k * d + p]) * int(w[q]) for p, q in taps) for k in range(4)]
    assert next(wide, None) is None and n_wide > 20
    copies = [list(map(int, ln.split()[1:])) for ln in lines if ln.startswith("C ")]
    assert len(copies) == 132
    for n, delta, *rest in copies:  # what the forward byte loop it replaces leaves, for every overlap
        want = rest[:40]
        for k in range(n):
            want[8 + delta + k] = want[8 + k]
        assert rest[40:] == want, (n, delta)
    long_copies = [list(map(int, ln.split()[1:])) for ln in lines if ln.startswith("L ")]
    assert len(long_copies) == 20  # runs of 64 and 71 bytes: memcpy where apart, the word loop where they overlap
    for n, delta, *rest in long_copies:
        want = rest[:224]
        for k in range(n):
            want[76 + delta + k] = want[76 + k]
        assert rest[224:] == want, (n, delta)
    fills = [list(map(int, ln.split()[1:])) for ln in lines if ln.startswith("F ")]
    assert len(fills) == 24
    for n, off, v, *got in fills:
        assert got == [v if off <= k < off + n else 0 for k in range(40)]
    row_lines = [list(map(int, ln.split()[1:])) for ln in lines if ln.startswith("K ")]
    assert len(row_lines) == 100 and {r[0] for r in row_lines} == {4, 8, 12, 16}  # weights in registers (<= 8) and loaded
    inside = total = 0
    for n, pairs, _os, bias, mult, right, zp, *rest in row_lines:  # tvmp_row_q15w_px2: bias + dot, requantized, clamped
        got, rest = rest[:2 * pairs], rest[2 * pairs:]
        act = np.array(rest[:2 * pairs * n], dtype=np.int64).reshape(2 * pairs, n)
        acc = bias + act @ np.array(rest[2 * pairs * n:], dtype=np.int64)
        want = multiply_by_quantized_multiplier_ref(acc, np.full_like(acc, mult), np.full_like(acc, -right)) + zp
        assert got == np.clip(want, -128, 127).tolist()
        inside += int(((want > -128) & (want < 127)).sum())
        total += 2 * pairs
    assert inside > total // 2  # most outputs unsaturated: a wrong sum shows
    quants = np.array([list(map(int, ln.split()[1:])) for ln in lines if ln.startswith("U ")], dtype=np.int64)
    assert len(quants) == 200
    q = quants[:, 0].astype(np.uint32).view(np.float32)
    with np.errstate(invalid="ignore"):  # the float expression it replaces: rint, + zp in float32, clamp; NaN -> 127
        v = np.rint(q) + quants[:, 1].astype(np.float32)
        want = np.where(v < 127, np.where(v > -128, v, -128), 127).astype(np.int64)
        ties = (np.abs(q - np.trunc(q)) == 0.5).sum()
    np.testing.assert_array_equal(quants[:, 2], want)
    assert np.isnan(q).any() and np.isinf(q).any() and ties > 30
    rows = [list(map(int, ln.split()[1:])) for ln in lines if ln.startswith("N ")]
    assert [r[0] for r in rows] == list(range(14))
    for n, offset, sbits, zp, *rest in rows:  # tvmp_quant_row_s8: each value as tvmp_quant_s8, nothing else written
        src, got = np.array(rest[:n], np.uint32).view(np.float32), np.array(rest[n:], np.int64)
        scale = np.array([sbits], np.uint32).view(np.float32)[0]
        v = np.rint(src / scale) + np.float32(zp)  # float32 throughout, as the kernel divides
        want = np.full(20, 0x55, np.int64)
        want[offset:offset + n] = np.where(v < 127, np.where(v > -128, v, -128), 127)
        np.testing.assert_array_equal(got, want)


def _widened_words(pair: np.ndarray) -> list[int]:
    """tvmp_widen_px2's words of a pixel pair (2 x n, n % 4 == 0): per four channels (c0, c2) and (c1, c3) of
    pixel 0, then of pixel 1, each an int16 half (the low one first)."""
    def pack(lo: int, hi: int) -> int:
        return (int(lo) & 0xFFFF) | ((int(hi) & 0xFFFF) << 16)

    return [pack(pair[p, i + j], pair[p, i + j + 2]) for i in range(0, pair.shape[1], 4) for p in range(2) for j in range(2)]


def _matmul_requant(k: int, transposed: bool, extern: bool, f_out: int = 5) -> tirx.PrimFunc:
    """out[i, f] = requant(sum_k A[i, k] * W[f, k] + bias[f]); W stored (F, K) or, transposed, (K, F)."""
    a = te.placeholder((3, k), "int8", name="A")
    w = te.placeholder((k, f_out) if transposed else (f_out, k), "int8", name="W")
    b = te.placeholder((f_out,), "int32", name="bias")
    r = te.reduce_axis((0, k), name="r")
    acc = te.compute((3, f_out), lambda i, f: te.sum(a[i, r].astype("int32") * (w[r, f] if transposed else w[f, r])
                                                 .astype("int32"), axis=r), name="acc")
    biased = te.compute((3, f_out), lambda i, f: acc[i, f] + b[f], name="biased")
    with extern_requantization() if extern else contextlib.nullcontext():
        q = requantize_te(biased, 1518500250, -9, -3)
    out = te.compute((3, f_out), lambda i, f: te.max(te.min(q[i, f], 127), -128).astype("int8"), name="out")
    return te.create_prim_func([a, w, b, out])


def _fresh(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    return d


def _c_lib(code: str, tmp: Path) -> ctypes.CDLL:
    """The C kernel ``code`` built by gcc (warnings as errors) and loaded; its function ``kern``."""
    (tmp / "k.c").write_text(code)
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-std=c99", "-shared", "-fPIC", str(tmp / "k.c"), "-o",
                    str(tmp / "k.so")], check=True)
    lib = ctypes.CDLL(str(tmp / "k.so"))
    lib.kern.restype = None
    return lib


def _c_and_tvm(func: tirx.PrimFunc, code: str, arrays: list[np.ndarray], tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    """The last array (the output) after the C kernel ``code`` (gcc) and after TVM's build of ``func`` with its
    micro-kernel calls expanded, from the same inputs."""
    lib = _c_lib(code, tmp)
    ours = [x.copy() for x in arrays]
    lib.kern(*[ctypes.c_void_p(x.ctypes.data) for x in ours])
    ex = tvm.compile(expand_extern_requantization(func), target={"kind": "llvm"})
    tensors = [tvm.runtime.tensor(x) for x in arrays]
    ex(*tensors)
    return ours[-1], tensors[-1].numpy()


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 70), transposed=st.booleans(), seed=st.integers(0, 2**16))
def test_dot_rewrite_is_exact_on_random_shapes(tmp_path_factory, k, transposed, seed):
    func = lean_schedule(_matmul_requant(k, transposed, extern=True))  # the export's schedule
    src = emit_c({"kern": func})
    kernels = src.code.replace(MICRO_KERNELS.read_text(), "")  # the generated code, without the header
    calls = len(re.findall(r"\btvmp_dot_s8\(", kernels))
    assert calls == (1 if k >= 4 and not transposed else 0)
    assert re.search(rf"\b{REQUANT_EXTERN}\(", src.code)
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(-128, 128, (3, k), dtype=np.int8),
              rng.integers(-128, 128, (k, 5) if transposed else (5, k), dtype=np.int8),
              rng.integers(-(2**14), 2**14, 5, dtype=np.int32), np.full((3, 5), 77, dtype=np.int8)]
    got, want = _c_and_tvm(func, src.code, arrays, tmp_path_factory.mktemp("dot"))
    np.testing.assert_array_equal(got, want)


def test_expand_leaves_no_extern_call():
    func = _matmul_requant(8, False, extern=True)
    assert REQUANT_EXTERN in func.script()
    assert REQUANT_EXTERN not in expand_extern_requantization(func).script()
    assert REQUANT_EXTERN not in _matmul_requant(8, False, extern=False).script()


def _conv_nhwc_ohwi(cin: int, k: int, stride: int, pad_value: int) -> tirx.PrimFunc:
    """A padded NHWC convolution with OHWI weights (the export's layout), requantized: border taps read the
    pad value, the others the input."""
    from tvm import topi

    a = te.placeholder((1, 7, 6, cin), "int8", name="A")
    w = te.placeholder((4, k, k, cin), "int8", name="W")
    p = k // 2
    padded = topi.nn.pad(a, [0, p, p, 0], [0, p, p, 0], pad_value=tvm.tirx.const(pad_value, "int8"), name="pad_temp")
    acc = topi.nn.conv(padded, w, stride, 0, 1, 1, "NHWC", "OHWI", "int32")
    with extern_requantization():
        q = requantize_te(acc, 1518500250, -8, 5)
    out = te.compute(q.shape, lambda *i: te.max(te.min(q(*i), 127), -128).astype("int8"), name="out")
    return te.create_prim_func([a, w, out])


@settings(max_examples=20, deadline=None)
@given(cin=st.integers(1, 20), k=st.sampled_from([1, 3, 5]), stride=st.sampled_from([1, 2]), rows=st.sampled_from([1, 2, 4]),
       pad_value=st.integers(-128, 127), seed=st.integers(0, 2**16))
def test_padded_conv_taps_use_the_dot_kernels_exactly(tmp_path_factory, cin, k, stride, rows, pad_value, seed):
    """Padded NHWC convolutions, unblocked (tvmp_dot_s8, border taps tvmp_sum_s8) or blocked by ``rows``
    (export/blocking.py: tvmp_dot_s8_rows, border taps tvmp_pad_rows), against TVM."""
    func = lean_schedule(block_output_channels(_conv_nhwc_ohwi(cin, k, stride, pad_value), rows))
    src = emit_c({"kern": func})
    kernels = src.code.replace(MICRO_KERNELS.read_text(), "")
    dot, border = ("tvmp_dot_s8(", "tvmp_sum_s8(") if rows == 1 else (f"tvmp_dot_s8_rows{rows}(", "tvmp_pad_rows(")
    fused = k * cin >= 4  # a kernel row's columns x channels, one contiguous run (micro_kernels._fused_taps)
    # (a pixel's run of a multiple of 4 that both channel blocks read is widened once: tvmp_dot_q15_rows)
    assert (dot in kernels or f"tvmp_dot_q15_rows{rows}(" in kernels) == (cin >= 4 or fused)
    assert (border in kernels) == ((cin >= 4 or fused) and k > 1)
    rng = np.random.default_rng(seed)
    out_shape = tuple(int(x) for x in func.params[-1].shape)
    arrays = [rng.integers(-128, 128, (1, 7, 6, cin), dtype=np.int8),
              rng.integers(-128, 128, (4, k, k, cin), dtype=np.int8), np.full(out_shape, 77, dtype=np.int8)]
    got, want = _c_and_tvm(func, src.code, arrays, tmp_path_factory.mktemp("conv"))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("rows", [1, 4])
def test_padded_conv_interior_runs_without_border_tests(tmp_path, rows):
    """partition_padding: the output loops of a padded convolution split into border ranges and the interior,
    whose taps call the dot kernels with no test (more dot calls than pad-sum calls), bit-exact with TVM."""
    func = lean_schedule(block_output_channels(_conv_nhwc_ohwi(8, 3, 1, -7), rows))
    kernels = emit_c({"kern": func}).code.replace(MICRO_KERNELS.read_text(), "")
    dot, border = ("tvmp_dot_s8(", "tvmp_sum_s8(") if rows == 1 else ("tvmp_dot_s8_rows4(", "tvmp_pad_rows(")
    assert kernels.count(dot) > kernels.count(border) >= 1
    assert re.search(r"for \(int32_t xx_1 = 0; xx_1 < 4;", kernels)  # the interior columns 1..4 of 6
    rng = np.random.default_rng(rows)
    arrays = [rng.integers(-128, 128, (1, 7, 6, 8), dtype=np.int8), rng.integers(-128, 128, (4, 3, 3, 8), dtype=np.int8),
              np.full((1, 7, 6, 4), 77, dtype=np.int8)]
    got, want = _c_and_tvm(func, emit_c({"kern": func}).code, arrays, tmp_path)
    np.testing.assert_array_equal(got, want)


@settings(max_examples=12, deadline=None)
@given(k=st.integers(1, 40), rows=st.sampled_from([2, 4]), f_blocks=st.integers(1, 3), seed=st.integers(0, 2**16))
@example(k=12, rows=4, f_blocks=3, seed=0)  # the input row widened once for three channel blocks
@example(k=12, rows=2, f_blocks=1, seed=1)  # one block: nothing to share
def test_blocked_dense_uses_the_rows_kernel_exactly(tmp_path_factory, k, rows, f_blocks, seed):
    """Register blocking (export/blocking.py) + the rows micro-kernel, against TVM on random shapes."""
    f_out = rows * f_blocks
    func = lean_schedule(block_output_channels(_matmul_requant(k, False, extern=True, f_out=f_out), rows))
    kernels = emit_c({"kern": func}).code.replace(MICRO_KERNELS.read_text(), "")
    # an input row that several channel blocks read, k % 4 == 0: widened once (tvmp_widen_px1 + tvmp_dot_q15_rows)
    widened = k % 4 == 0 and f_blocks >= 2
    assert (f"tvmp_dot_s8_rows{rows}(" in kernels) == (k >= 4 and not widened)
    assert (f"tvmp_dot_q15_rows{rows}(" in kernels) == ("tvmp_widen_px1(" in kernels) == widened
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(-128, 128, (3, k), dtype=np.int8), rng.integers(-128, 128, (f_out, k), dtype=np.int8),
              rng.integers(-(2**14), 2**14, f_out, dtype=np.int32), np.full((3, f_out), 77, dtype=np.int8)]
    got, want = _c_and_tvm(func, emit_c({"kern": func}).code, arrays, tmp_path_factory.mktemp("rows"))
    np.testing.assert_array_equal(got, want)


@settings(max_examples=12, deadline=None)
@given(cin=st.integers(1, 40), rows=st.sampled_from([2, 4]), stride=st.sampled_from([1, 2]), k=st.sampled_from([1, 3]),
       pad_value=st.integers(-128, 127), seed=st.integers(0, 2**16))
@example(cin=8, rows=2, stride=1, k=3, pad_value=-128, seed=1)  # taps widened: one pair per kernel row
@example(cin=12, rows=2, stride=1, k=1, pad_value=0, seed=2)
@example(cin=2, rows=2, stride=1, k=3, pad_value=0, seed=0)  # 3 x 2 bytes per kernel row: pairs, not widened
def test_pixel_blocked_conv_uses_the_px2_kernel_exactly(tmp_path_factory, cin, rows, stride, k, pad_value, seed):
    """block_pixels (two output pixels x rows channels under the reduction) + tvmp_dot_s8_px2_rows*, against
    TVM on random 1x1 and padded 3x3 convolutions (stride 1 or 2; at the border a pair whose taps the padding
    splits runs each pixel alone)."""
    src = _conv_nhwc_ohwi(cin, k, stride, pad_value)
    blocked = block_pixels(src, rows)
    width = int(src.params[-1].shape[2])
    assert (blocked is src) == (width % 2 == 1 or cin == 1)  # cin 1: no reduction to block under
    func = lean_schedule(blocked)
    code = emit_c({"kern": func}).code
    body = code.replace(MICRO_KERNELS.read_text(), "")
    paired = width % 2 == 0 and cin >= 2 and k * cin >= 4  # k x k: a kernel row's taps x channels are one run
    # the pair sign-extended once for 2 blocks, in a C local of at most MAX_WIDE_BYTES (k x k: one per kernel row)
    widened = paired and cin % 4 == 0 and 4 // rows >= 2 and 4 * k * k * cin <= MAX_WIDE_BYTES
    assert (f"tvmp_dot_s8_px2_rows{rows}(" in body or f"tvmp_dot_q15_px2_rows{rows}(" in body) == paired
    assert (f"tvmp_dot_q15_px2_rows{rows}(" in body) == ("tvmp_widen_px2(" in body)
    if k == 1 or stride == 1:  # 1x1: the pair; 3x3 at stride 1: the interior's pairs, one widened per kernel row
        assert ("tvmp_widen_px2(" in body) == widened
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(-128, 128, (1, 7, 6, cin), dtype=np.int8), rng.integers(-128, 128, (4, k, k, cin), dtype=np.int8),
              np.full(tuple(int(x) for x in func.params[-1].shape), 77, dtype=np.int8)]
    got, want = _c_and_tvm(func, code, arrays, tmp_path_factory.mktemp("px2"))
    np.testing.assert_array_equal(got, want)


def _px2_call(code: str, rows: int) -> bool:
    """Whether the kernel calls a two-pixel kernel of ``rows`` rows: in one step, or on a pair widened once for
    several channel blocks (codegen.widen_kernels)."""
    body = code.replace(MICRO_KERNELS.read_text(), "")
    widen = "tvmp_widen_px2(" in body or "tvmp_widen_px2_planes(" in body  # a pixel-major pair, or channel planes
    four = f"tvmp_dot_q15_px4_rows{rows}(" in body  # two widened pairs a call (codegen.four_pixels)
    return f"tvmp_dot_s8_px2_rows{rows}(" in body or ((f"tvmp_dot_q15_px2_rows{rows}(" in body or four) and widen)


def _depthwise(layout: str, h: int, w: int, k: int, stride: int, pad: int, pad_value: int) -> tirx.PrimFunc:
    """A padded depthwise convolution (3 channels) in NHWC or NCHW, requantized, as TOPI builds it."""
    from tvm import topi

    c = 3
    shape = (1, h, w, c) if layout == "NHWC" else (1, c, h, w)
    a = te.placeholder(shape, "int8", name="A")
    if layout == "NHWC":
        wt = te.placeholder((k, k, c, 1), "int8", name="W")
        padded = topi.nn.pad(a, [0, pad, pad, 0], [0, pad, pad, 0], pad_value=tirx.const(pad_value, "int8"), name="pad_temp")
        acc = topi.nn.depthwise_conv2d_nhwc(padded, wt, stride, 0, 1, out_dtype="int32")
    else:
        wt = te.placeholder((c, 1, k, k), "int8", name="W")
        padded = topi.nn.pad(a, [0, 0, pad, pad], [0, 0, pad, pad], pad_value=tirx.const(pad_value, "int8"), name="pad_temp")
        acc = topi.nn.depthwise_conv2d_nchw(padded, wt, stride, 0, 1, out_dtype="int32")
    with extern_requantization():
        q = requantize_te(acc, 1518500250, -6, 3)
    out = te.compute(q.shape, lambda *i: te.max(te.min(q(*i), 127), -128).astype("int8"), name="out")
    return te.create_prim_func([a, wt, out])


@settings(max_examples=12, deadline=None)
@given(layout=st.sampled_from(["NHWC", "NCHW"]), h=st.integers(1, 9), w=st.integers(1, 9),
       k=st.sampled_from([3, 5]), stride=st.sampled_from([1, 2]), pad=st.integers(0, 2),
       pad_value=st.integers(-128, 127), seed=st.integers(0, 2**16))
def test_depthwise_windows_are_exact(tmp_path_factory, layout, h, w, k, stride, pad, pad_value, seed):
    """Depthwise taps become tvmp_window_s8 calls (interior windows test-free, border ones bounded), bit-exact."""
    if h + 2 * pad < k or w + 2 * pad < k:
        return  # no output
    func = lean_schedule(_depthwise(layout, h, w, k, stride, pad, pad_value))
    src = emit_c({"kern": func})
    # a window call (one output, a pair of interior 3x3 stride-1 outputs, four of 5x5 / 7x7 ones), or a dot
    # product where a window row is contiguous in both operands (NCHW, stride 1)
    assert re.search(r"\btvmp_(window[24]?|dot)_s8\(", src.code.replace(MICRO_KERNELS.read_text(), ""))
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(-128, 128, tuple(int(x) for x in p.shape), dtype=np.int8) for p in func.params[:-1]]
    arrays.append(np.full(tuple(int(x) for x in func.params[-1].shape), 77, dtype=np.int8))
    got, want = _c_and_tvm(func, src.code, arrays, tmp_path_factory.mktemp("dw"))
    np.testing.assert_array_equal(got, want)


@settings(max_examples=10, deadline=None)
@given(h=st.integers(3, 8), w=st.integers(3, 12), stride=st.sampled_from([1, 2]), pad=st.integers(0, 1),
       pad_value=st.integers(-128, 127), seed=st.integers(0, 2**16))
def test_channel_outer_depthwise_pairs_strided_windows_exactly(tmp_path_factory, h, w, stride, pad, pad_value, seed):
    """An NHWC depthwise kernel not run in place with its channel loop outside the rows (channel_outer_schedule):
    neighbouring interior windows (taps C bytes apart, stride 1 or 2) pair in tvmp_window2_s8; against TVM."""
    from tvm_patch.export.inplace_conv import channel_outer_schedule

    lean = lean_schedule(_depthwise("NHWC", h, w, 3, stride, pad, pad_value))
    func = channel_outer_schedule(lean, 1)
    nchw = lean_schedule(_depthwise("NCHW", h, w, 3, 1, 1, 0))
    assert func is not lean and channel_outer_schedule(nchw, 1) is nchw  # NCHW: channels outside already
    src = emit_c({"kern": func})
    if stride == 1 and pad == 1 and w >= 6:  # at least two pairs of interior outputs per row
        assert "tvmp_window2_s8(" in src.code.replace(MICRO_KERNELS.read_text(), "")
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(-128, 128, tuple(int(x) for x in p.shape), dtype=np.int8) for p in func.params[:-1]]
    arrays.append(np.full(tuple(int(x) for x in func.params[-1].shape), 77, dtype=np.int8))
    got, want = _c_and_tvm(func, src.code, arrays, tmp_path_factory.mktemp("dwco"))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("h, w, k, pad, stride, calls", [
    (9, 9, 5, 2, 1, ("tvmp_window4_s8(",)),  # 5 interior outputs a row: four, then one
    (8, 11, 7, 0, 1, ("tvmp_window4_s8(",)),
    (6, 9, 5, 1, 1, ("tvmp_window4_s8(",)),
    (9, 13, 7, 3, 1, ("tvmp_window4_s8(",)),  # 7 interior: four, then the last four (round 35; a pair and one)
    (12, 22, 7, 3, 2, ("tvmp_window4_s8(",)),  # stride 2, 7 wide: four a call too
    (9, 11, 7, 0, 2, ("tvmp_window3_s8(",)),  # stride 2, 7 wide, a row of three: three a call (round 25)
    (9, 19, 7, 0, 2, ("tvmp_window4_s8(", "tvmp_window3_s8(")),  # seven: four, then three
    (9, 17, 5, 2, 2, ("tvmp_window2_s8(",)),  # stride 2, 5 wide: pairs (four measured slower)
    (9, 14, 3, 1, 2, ("tvmp_window2_s8(",)),  # stride 2, 3 wide: pairs too (round 37)
    (8, 11, 3, 0, 2, ("tvmp_window2_s8(",)),  # the same, no padding, an odd row: pairs, then one
])
def test_nchw_wide_windows_pair_exactly(tmp_path, h, w, k, pad, stride, calls):
    """NCHW 5x5 / 7x7 depthwise windows, whose kernel rows are dot-product calls, run four or two along a row
    (window_blocks._dot_rows_window, then tvmp_window4_s8 / tvmp_window2_s8's wide-row paths), and 3x3 ones at
    stride 2 two a call (tvmp_window2_s8's 3-wide path); bit-exact with TVM."""
    func = lean_schedule(_depthwise("NCHW", h, w, k, stride, pad, -9))
    src = emit_c({"kern": func})
    code = src.code.replace(MICRO_KERNELS.read_text(), "")
    assert all(c in code for c in calls) and ("tvmp_window4_s8(" in code) == ("tvmp_window4_s8(" in calls)
    assert ("tvmp_window3_s8(" in code) == ("tvmp_window3_s8(" in calls)
    rng = np.random.default_rng(5)
    arrays = [rng.integers(-128, 128, tuple(int(x) for x in p.shape), dtype=np.int8) for p in func.params[:-1]]
    arrays.append(np.full(tuple(int(x) for x in func.params[-1].shape), 77, dtype=np.int8))
    got, want = _c_and_tvm(func, src.code, arrays, tmp_path)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_planes_smaller_than_the_kernel_are_peeled(tmp_path, layout):
    """A 5x5 depthwise kernel over a 3x3 plane (padding 2: every output a border one) has its output loops peeled
    (border_partition._peeled): one window call per output, each with constant bounds; bit-exact with TVM."""
    func = lean_schedule(_depthwise(layout, 3, 3, 5, 1, 2, -7))
    src = emit_c({"kern": func})
    calls = [ln for ln in src.code.replace(MICRO_KERNELS.read_text(), "").splitlines() if "tvmp_window_s8(" in ln]
    assert len(calls) == 9 and not any("?" in ln for ln in calls)  # no bound computed per output
    rng = np.random.default_rng(3)
    arrays = [rng.integers(-128, 128, tuple(int(x) for x in p.shape), dtype=np.int8) for p in func.params[:-1]]
    arrays.append(np.full(tuple(int(x) for x in func.params[-1].shape), 77, dtype=np.int8))
    got, want = _c_and_tvm(func, src.code, arrays, tmp_path)
    np.testing.assert_array_equal(got, want)
    # planes of up to MAX_PEELED_EXTENT outputs (7x7 over 6x6) and, on larger planes, border ranges of up to
    # MAX_PEELED_BORDER values (5x5 over 9x9: padding 2) too: no window bound computed per output
    for h, k, pad in ((6, 7, 3), (9, 5, 2)):
        func = lean_schedule(_depthwise(layout, h, h, k, 1, pad, -7))
        src = emit_c({"kern": func})
        calls = [ln for ln in src.code.replace(MICRO_KERNELS.read_text(), "").splitlines() if "tvmp_window_s8(" in ln]
        assert calls and not any("?" in ln for ln in calls)
        arrays = [rng.integers(-128, 128, tuple(int(x) for x in p.shape), dtype=np.int8) for p in func.params[:-1]]
        arrays.append(np.full(tuple(int(x) for x in func.params[-1].shape), 77, dtype=np.int8))
        got, want = _c_and_tvm(func, src.code, arrays, _fresh(tmp_path / f"k{k}"))
        np.testing.assert_array_equal(got, want)


@settings(max_examples=8, deadline=None)
@given(w=st.integers(5, 14), stride=st.sampled_from([1, 2]), pad_value=st.integers(-128, 127), seed=st.integers(0, 2**16))
def test_nchw_stem_pairs_its_windows_over_channels_exactly(tmp_path_factory, w, stride, pad_value, seed):
    """An NCHW 3x3 stem over 3 input channels (``for rc: acc = tvmp_window_s8(...)`` per output): neighbouring
    interior outputs pair (tvmp_window2_s8 inside the channel loop, window_blocks.window_blocks);
    bit-exact with TVM at stride 1 and 2, odd and even rows."""
    from tvm import topi

    a = te.placeholder((1, 3, 9, w), "int8", name="A")
    wt = te.placeholder((4, 3, 3, 3), "int8", name="W")
    padded = topi.nn.pad(a, [0, 0, 1, 1], [0, 0, 1, 1], pad_value=tirx.const(pad_value, "int8"), name="pad_temp")
    acc = topi.nn.conv(padded, wt, stride, 0, 1, 1, "NCHW", "OIHW", "int32")
    with extern_requantization():
        q = requantize_te(acc, 1518500250, -8, 5)
    out = te.compute(q.shape, lambda *i: te.max(te.min(q(*i), 127), -128).astype("int8"), name="out")
    func = lean_schedule(te.create_prim_func([a, wt, out]))
    src = emit_c({"kern": func})
    out_w = (w + 2 - 3) // stride + 1
    interior = sum(1 for x in range(out_w) if x * stride - 1 >= 0 and x * stride + 1 <= w - 1)  # no padded tap
    assert ("tvmp_window2_s8(" in src.code.replace(MICRO_KERNELS.read_text(), "")) == (interior >= 2 * MIN_WINDOW_PAIRS)
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(-128, 128, tuple(int(x) for x in p.shape), dtype=np.int8) for p in func.params[:-1]]
    arrays.append(np.full(tuple(int(x) for x in func.params[-1].shape), 77, dtype=np.int8))
    got, want = _c_and_tvm(func, src.code, arrays, tmp_path_factory.mktemp("stem"))
    np.testing.assert_array_equal(got, want)


@settings(max_examples=14, deadline=None)
@given(layout=st.sampled_from(["NCHW", "NHWC"]), h=st.integers(3, 12), w=st.integers(3, 10),
       k=st.sampled_from([(3, 3), (5, 5), (10, 4)]), stride=st.sampled_from([1, 2]), cin=st.integers(1, 4),
       cout=st.sampled_from([2, 4, 8, 6]), pad_value=st.integers(-128, 127), seed=st.integers(0, 2**16))
@example(layout="NHWC", h=12, w=10, k=(10, 4), stride=2, cin=1, cout=8, pad_value=83, seed=1)  # kws's stem in small
@example(layout="NHWC", h=9, w=9, k=(3, 3), stride=2, cin=3, cout=8, pad_value=-128, seed=2)  # vww's (27 taps)
def test_stem_through_a_window_copy_is_exact(tmp_path_factory, layout, h, w, k, stride, cin, cout, pad_value, seed):
    """A k x k convolution over few input channels (a stem; NCHW, or NHWC as kws's 10 x 4 over one channel)
    through a copy of each output pixel's window (export/window_copy.py): one tvmp_dot_s8_rows* call over the
    whole window per channel block, or over two pixels' windows (tvmp_dot_s8_px2_rows*) where the output width is
    even; the copy a C local (no workspace); against TVM's build of the unscheduled kernel."""
    from tvm import topi

    from tvm_patch.codegen.wide_weights import padded_layout
    from tvm_patch.export.window_copy import PAIR_ROWS, window_copy_schedule

    (kh, kw), nchw = k, layout == "NCHW"
    h = max(h, kh)
    a = te.placeholder((1, cin, h, w) if nchw else (1, h, w, cin), "int8", name="A")
    wt = te.placeholder((cout, cin, kh, kw) if nchw else (cout, kh, kw, cin), "int8", name="W")
    pads = ([0, 0, kh // 2, kw // 2], [0, 0, (kh - 1) // 2, (kw - 1) // 2]) if nchw else \
        ([0, kh // 2, kw // 2, 0], [0, (kh - 1) // 2, (kw - 1) // 2, 0])
    padded = topi.nn.pad(a, *pads, pad_value=tirx.const(pad_value, "int8"), name="pad_temp")
    acc = topi.nn.conv(padded, wt, stride, 0, 1, 1, layout, "OIHW" if nchw else "OHWI", "int32")
    with extern_requantization():
        q = requantize_te(acc, 1518500250, -8, 5)
    out = te.compute(q.shape, lambda *i: te.max(te.min(q(*i), 127), -128).astype("int8"), name="out")
    func = te.create_prim_func([a, wt, out])
    rows = 4 if cout % 4 == 0 else 2
    sched = window_copy_schedule(func, rows)
    too_big = cin * kh * kw > 64  # LOCAL_MAX_BYTES: the copy would need workspace
    assert (sched is func) == too_big
    if too_big:
        sched = lean_schedule(func)  # no workspace either
    src = emit_c({"kern": sched})
    code = src.code.replace(MICRO_KERNELS.read_text(), "")
    taps = cin * kh * kw
    if not too_big:  # one rows call a channel block; odd lengths padded to words (pad_rows.py), then widened once
        padded = -(-taps // 4) * 4
        out_w = int(func.params[-1].shape[3 if nchw else 2])
        pair = "_px2" if out_w % 2 == 0 and 2 * padded <= 64 else ""  # two pixels' windows side by side, a call
        block = min(rows, PAIR_ROWS) if pair else rows
        assert re.search(rf"tvmp_dot_(s8|q15){pair}_rows{block}\(.*, {padded}, \(&", code)  # (its length, then acc)
        assert tuple(src.functions["kern"].params[1].shape) == ((cout, padded) if padded != taps else tuple(int(d) for d in wt.shape))
        assert not src.workspace_bytes.get("kern")
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(-128, 128, tuple(int(x) for x in p.shape), dtype=np.int8) for p in func.params[:-1]]
    arrays.append(np.full(tuple(int(x) for x in func.params[-1].shape), 77, dtype=np.int8))
    ours = [x.copy() for x in arrays]
    ours[1] = padded_layout(arrays[1], tuple(src.functions["kern"].params[1].shape))  # as the export stores it
    got = _c_out_of_place(src.code, ours, src.workspace_bytes.get("kern", 0), tmp_path_factory.mktemp("stemcopy"))
    np.testing.assert_array_equal(got, _tvm_out(func, arrays))
    dw = _depthwise(layout, h, w, 3, 1, 1, 0)
    assert window_copy_schedule(dw, 2) is dw  # a depthwise convolution: unchanged


def test_blocking_leaves_other_kernels_alone():
    """Channels that rows does not divide, depthwise-like reads and rows=1 keep the function as it is."""
    dense = _matmul_requant(8, False, extern=True, f_out=5)
    assert block_output_channels(dense, 2).same_as(dense)  # 5 channels: not divisible
    assert block_output_channels(dense, 1).same_as(dense)
    with pytest.raises(ValueError):
        block_output_channels(dense, 3)
    assert not block_output_channels(_matmul_requant(8, False, extern=True, f_out=4), 4).same_as(dense)


def test_nhwc_weights_are_stored_output_major():
    """The export's weight layout rewrite: HWIO constants become OHWI, outputs unchanged (--check)."""
    from tvm import relax

    from tvm_patch.export.weight_layout import output_major_weights

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 5, 5, 3), "float32"))
    w = np.arange(2 * 2 * 3 * 4, dtype=np.float32).reshape(2, 2, 3, 4)
    with bb.function("main", [x]):
        y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), data_layout="NHWC", kernel_layout="HWIO"))
        bb.emit_func_output(y)
    orig = bb.get()
    mod = output_major_weights(orig)
    text = mod["main"].script()
    assert 'kernel_layout="OHWI"' in text
    ref = tvm.compile(orig, target=tvm.target.Target({"kind": "llvm"}))
    new = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    data = np.random.default_rng(0).standard_normal((1, 5, 5, 3)).astype("float32")
    want = relax.VirtualMachine(ref, tvm.cpu())["main"](tvm.runtime.tensor(data)).numpy()
    got = relax.VirtualMachine(new, tvm.cpu())["main"](tvm.runtime.tensor(data)).numpy()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("spec", ["vww_96_int8.tflite", "kws_int8.tflite", "zoo:mcunet-in0:int8"])
def test_kernel_macs_add_up_to_the_analytic_profile(spec, shared_models):
    """Per-call MACs read from the kernels' TIR (export JSON ``call_info``) equal the profile's MACs."""
    from tvm_patch.export.kernel_info import kernel_info
    from tvm_patch.export.lower import lower_module
    from tvm_patch.frontend import load
    from tvm_patch.report import profile
    from tvm_patch.transform.lower_to_integer import lower_to_integer

    path = spec if spec.startswith("zoo:") else str(shared_models / "mlperf_tiny" / spec)
    prog = lower_module(lower_to_integer(load(path).mod))
    infos = [kernel_info(prog.funcs[c.func]) for c in prog.calls]
    assert sum(i.macs for i in infos) == profile(path)["layer_by_layer"]["macs"]
    kinds = {i.kind for i in infos}
    assert {"conv1x1", "depthwise", "dense"} <= kinds


def test_plain_and_micro_exports_agree(tmp_path, shared_models):
    """--kernels plain (TVM's kernels) and micro (the default) export the same network, bit-exact with TVM."""
    from tvm_patch.export import export_model

    model = str(shared_models / "mlperf_tiny" / "kws_int8.tflite")
    micro = export_model(model, tmp_path / "micro", check=True)
    plain = export_model(model, tmp_path / "plain", check=True, kernels="plain")
    assert micro.check.bit_exact and plain.check.bit_exact
    assert micro.micro_kernels and not plain.micro_kernels
    micro_c, plain_c = ((tmp_path / d / "model.c").read_text() for d in ("micro", "plain"))
    assert re.search(r"= tvmp_dot_s8\(", micro_c) and re.search(r"tvmp_requant\(", micro_c)
    assert all(f"{k}(" in micro_c for k in ("tvmp_window_s8", "tvmp_sat_s8")) and re.search(r"tvmp_dot_\w+_rows4\(", micro_c)
    assert "tvmp_dot_s8" not in plain_c and "tvmp_requant" not in plain_c
    assert micro.arena_bytes == plain.arena_bytes and micro.weights_bytes == plain.weights_bytes


def _c_in_place(code: str, arrays: list[np.ndarray], workspace: int, tmp: Path) -> np.ndarray:
    """The C kernel ``code`` run in place: its output pointer is its first input's (the export's in-place call);
    the output read back from that buffer. ``workspace``: bytes of the kernel's workspace argument (0: none)."""
    lib = _c_lib(code, tmp)
    ours = [x.copy() for x in arrays[:-1]]
    ws = np.zeros(max(workspace, 1), dtype=np.uint8)
    lib.kern(*[ctypes.c_void_p(x.ctypes.data) for x in ours], ctypes.c_void_p(ours[0].ctypes.data),
             *([ctypes.c_void_p(ws.ctypes.data)] if workspace else []))
    out = arrays[-1]
    return ours[0].reshape(-1)[:out.size].reshape(out.shape)


def _c_out_of_place(code: str, arrays: list[np.ndarray], workspace: int, tmp: Path) -> np.ndarray:
    """The C kernel ``code`` run with its own output buffer and ``workspace`` bytes of workspace (0: none)."""
    (tmp / "k.c").write_text(code)
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-std=c99", "-shared", "-fPIC", str(tmp / "k.c"), "-o",
                    str(tmp / "k.so")], check=True)
    lib = ctypes.CDLL(str(tmp / "k.so"))
    ours = [x.copy() for x in arrays]
    ws = np.zeros(max(workspace, 1), dtype=np.uint8)
    lib.kern.restype = None
    lib.kern(*[ctypes.c_void_p(x.ctypes.data) for x in ours], *([ctypes.c_void_p(ws.ctypes.data)] if workspace else []))
    return ours[-1]


def _tvm_out(func: tirx.PrimFunc, arrays: list[np.ndarray]) -> np.ndarray:
    ex = tvm.compile(expand_extern_requantization(func), target={"kind": "llvm"})
    tensors = [tvm.runtime.tensor(x) for x in arrays]
    ex(*tensors)
    return tensors[-1].numpy()


def _pointwise(h: int, w: int, cin: int, cout: int, layout: str = "NHWC") -> tirx.PrimFunc:
    """A 1x1 convolution, NHWC (OHWI weights) or NCHW (OIHW weights), requantized."""
    from tvm import topi

    nchw = layout == "NCHW"
    a = te.placeholder((1, cin, h, w) if nchw else (1, h, w, cin), "int8", name="A")
    wt = te.placeholder((cout, cin, 1, 1) if nchw else (cout, 1, 1, cin), "int8", name="W")
    acc = topi.nn.conv(a, wt, 1, 0, 1, 1, layout, "OIHW" if nchw else "OHWI", "int32")
    with extern_requantization():
        q = requantize_te(acc, 1518500250, -8, 5)
    out = te.compute(q.shape, lambda *i: te.max(te.min(q(*i), 127), -128).astype("int8"), name="out")
    return te.create_prim_func([a, wt, out])


@settings(max_examples=10, deadline=None)
@given(h=st.integers(2, 4), w=st.sampled_from([4, 6]), cin=st.integers(4, 32), drop=st.integers(0, 3),
       rows=st.sampled_from([2, 4]), seed=st.integers(0, 2**16))
def test_in_place_pointwise_takes_two_pixels_exactly(tmp_path_factory, h, w, cin, drop, rows, seed):
    """An in-place NHWC 1x1 kernel blocked over two pixels copies the pixel pair (inplace_conv_schedule on
    block_pixels' form); the in-place proof accepts the pair, and the kernel run in place (output over its input)
    equals TVM's out-of-place result."""
    from tvm_patch.codegen.c_kernels import mark_in_place
    from tvm_patch.export.inplace_conv import inplace_conv_pairs, inplace_conv_schedule

    cout = max(1, cin - drop * rows) // rows * rows or rows
    if cout > cin:
        return
    src = _pointwise(h, w, cin, cout)
    func = inplace_conv_schedule(lean_schedule(block_pixels(src, min(rows, 2))), 1)
    pairs = inplace_conv_pairs(func, 1)
    assert pairs == [(0, 2)]
    csrc = emit_c({"kern": mark_in_place(func, pairs)})
    assert _px2_call(csrc.code, min(rows, 2))
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(-128, 128, (1, h, w, cin), dtype=np.int8), rng.integers(-128, 128, (cout, 1, 1, cin), dtype=np.int8),
              np.zeros((1, h, w, cout), dtype=np.int8)]
    got = _c_in_place(csrc.code, arrays, csrc.workspace_bytes.get("kern", 0), tmp_path_factory.mktemp("px2ip"))
    np.testing.assert_array_equal(got, _tvm_out(src, arrays))


@settings(max_examples=10, deadline=None)
@given(h=st.integers(1, 4), w=st.sampled_from([2, 4, 6, 5]), cin=st.integers(4, 40), cout_blocks=st.integers(1, 12),
       seed=st.integers(0, 2**16))
@example(h=2, w=2, cin=16, cout_blocks=3, seed=0)  # a 2 x 2 plane: four pixels a call (and in place: pairs)
@example(h=3, w=4, cin=12, cout_blocks=2, seed=1)  # rows of four: four pixels a call, the loop's tails
def test_nchw_pointwise_takes_two_pixels_exactly(tmp_path_factory, h, w, cin, cout_blocks, seed):
    """An NCHW 1x1 kernel blocked over two pixels (block_pixels channels_first) copies the pixel pair pixel-major
    (pixel_pair_copy_schedule) and calls tvmp_dot_s8_px2_rows2 (odd W: left as it is), or widened pairs, two of
    them a call where they are four pixels (codegen.four_pixels); against TVM out of place and, with no more
    output than input channels, run in place (the proof's NCHW pixel groups; never four pixels a call)."""
    from tvm_patch.codegen.c_kernels import mark_in_place
    from tvm_patch.export.inplace_conv import inplace_conv_pairs, pixel_pair_copy_schedule

    cout = 2 * cout_blocks
    src = _pointwise(h, w, cin, cout, "NCHW")
    blocked = block_pixels(src, 2, channels_first=True)
    assert (blocked is src) == (w % 2 == 1)
    assert block_pixels(src, 2) is src  # the NHWC form does not take an NCHW kernel
    if blocked is src:
        return
    lean = lean_schedule(blocked)
    func = pixel_pair_copy_schedule(lean, 1)
    assert func is not lean
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(-128, 128, (1, cin, h, w), dtype=np.int8), rng.integers(-128, 128, (cout, cin, 1, 1), dtype=np.int8),
              np.full((1, cout, h, w), 77, dtype=np.int8)]
    csrc = emit_c({"kern": func})
    assert _px2_call(csrc.code, 2)
    body = csrc.code.replace(MICRO_KERNELS.read_text(), "")
    # from the channel planes (no pixel-major copy) where the pair is widened: 4-channel groups, 2+ channel blocks
    widened = cin % 4 == 0 and cout_blocks >= 2 and 4 * cin <= MAX_WIDE_BYTES
    assert ("tvmp_widen_px2_planes(" in body) == widened
    assert "tvmp_widen_px2(" not in body
    # four pixels a call where a loop of two widened pairs meets every channel block (a row of 4, a 2 x 2 plane)
    assert ("tvmp_dot_q15_px4_rows2(" in body) == (widened and (w == 4 or (h, w) == (2, 2)))
    assert ("tvmp_dot_q15_px2_rows2(" in body) == (widened and not (w == 4 or (h, w) == (2, 2)))
    tmp = tmp_path_factory.mktemp("px2nchw")
    want = _tvm_out(src, arrays)
    if not csrc.workspace_bytes.get("kern", 0):
        got, _ = _c_and_tvm(func, csrc.code, arrays, tmp)
        np.testing.assert_array_equal(got, want)
    pairs = inplace_conv_pairs(func, 1)
    if h >= 2 and w >= 4:  # the proof's loops (unit loops drop out: one row or one group proves nothing)
        assert pairs == [(0, 2)]
    if pairs and cout <= cin:
        ip = emit_c({"kern": mark_in_place(func, pairs)})
        assert "tvmp_dot_q15_px4_rows" not in ip.code.replace(MICRO_KERNELS.read_text(), "")  # reorders: not in place
        got = _c_in_place(ip.code, arrays, ip.workspace_bytes.get("kern", 0), tmp)
        np.testing.assert_array_equal(got, want)


@settings(max_examples=8, deadline=None)
@given(h=st.sampled_from([1, 3, 5]), w=st.sampled_from([3, 5, 7]), cin=st.integers(4, 40),
       cout_blocks=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_odd_planes_take_overlapping_pixel_pairs_exactly(tmp_path_factory, h, w, cin, cout_blocks, seed):
    """An NCHW 1x1 kernel over an odd plane as one row of H * W pixels (odd_planes.plane_as_row), blocked over
    two pixels with an overhang, its last pair overlapping the one before (overlap_pairs): two-pixel calls only,
    equal to TVM's result on the H x W planes (the recomputed pixel written twice, the same); never in place."""
    from tvm_patch.export.inplace import inplace_pairs
    from tvm_patch.export.inplace_conv import inplace_conv_pairs, pixel_pair_copy_schedule
    from tvm_patch.export.odd_planes import (OVERLAP_ATTR, block_pairs_nchw, overlap_odd_row, overlap_pairs,
                                             plane_as_row, predicated)

    cout = 2 * cout_blocks
    src = _pointwise(h, w, cin, cout, "NCHW")
    row = plane_as_row(src)
    assert (row is src) == (h == 1)
    assert [int(d) for d in row.params[0].ty.shape] == [1, cin, 1, h * w]
    assert block_pixels(row, 2, channels_first=True) is row  # an odd row: pairs only with the overhang
    blocked = block_pairs_nchw(src, 2)
    assert tvm_ffi.structural_equal(blocked, block_pixels(row, 2, channels_first=True, overhang=True))
    copied = pixel_pair_copy_schedule(lean_schedule(blocked), 1)
    assert predicated(copied)  # the overhang: exact as it is, the last pair one pixel
    func = overlap_odd_row(copied)
    assert OVERLAP_ATTR in func.attrs and not predicated(func)
    assert inplace_conv_pairs(func, 1) == [] and inplace_pairs(func, 1) == []
    assert overlap_pairs(func, h * w + 2) is func  # nothing predicated left to overlap
    csrc = emit_c({"kern": func})
    assert _px2_call(csrc.code, 2)
    body = csrc.code.replace(MICRO_KERNELS.read_text(), "")
    assert "tvmp_dot_s8_rows" not in body and "tvmp_dot_s8(" not in body  # no one-pixel tail
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(-128, 128, (1, cin, h, w), dtype=np.int8),
              rng.integers(-128, 128, (cout, cin, 1, 1), dtype=np.int8), np.full((1, cout, h, w), 77, dtype=np.int8)]
    lib = _c_lib(csrc.code, tmp_path_factory.mktemp("px2odd"))
    ours = [x.copy() for x in arrays]
    ws = np.zeros(max(csrc.workspace_bytes.get("kern", 0), 1), dtype=np.uint8)
    lib.kern(*[ctypes.c_void_p(x.ctypes.data) for x in ours],
             *([ctypes.c_void_p(ws.ctypes.data)] if csrc.workspace_bytes.get("kern", 0) else []))
    np.testing.assert_array_equal(ours[-1], _tvm_out(src, arrays))


def test_odd_planes_refuse_other_kernels():
    """plane_as_row leaves a kernel whose blocks do not read each output pixel's own input pixel (a 3 x 3 window,
    a stride) as it is, and overlap_pairs a kernel without predicated pairs."""
    from tvm_patch.export.odd_planes import overlap_pairs, plane_as_row

    from tvm import topi

    window = _depthwise("NCHW", 5, 5, 3, 1, 1, 0)
    assert plane_as_row(window) is window
    a = te.placeholder((1, 8, 6, 6), "int8", name="A")  # a strided 1x1 layer: 3 x 3 out of 6 x 6
    wt = te.placeholder((4, 8, 1, 1), "int8", name="W")
    strided = te.create_prim_func([a, wt, topi.nn.conv(a, wt, 2, 0, 1, 1, "NCHW", "OIHW", "int32")])
    assert plane_as_row(strided) is strided
    even = lean_schedule(block_pixels(_pointwise(2, 4, 8, 4, "NCHW"), 2, channels_first=True))
    assert overlap_pairs(even, 7) is even


def test_pixel_groups_in_the_in_place_proof():
    """channel_or_pixel_safe's pixel groups: W indexed by w0 * P + r with r in [0, P) and P dividing W; not
    with a remainder that can reach P, nor with P not dividing W, nor with more output than input channels."""
    from tvm_patch.export.inplace_conv import channel_or_pixel_safe

    h, w0, r, c = (tirx.Var(n, "int32") for n in ("h", "w0", "r", "c"))
    zero = tirx.const(0, "int32")

    def safe(step: int, r_extent: int, width: int, cout: int = 8) -> bool:
        ana = tvm.sym.Analyzer()
        for v, ext in ((h, 3), (w0, width // step), (r, r_extent), (c, 8)):
            ana.bind(v, tvm.ir.Range.from_min_extent(0, ext))
        idx = [zero, h, w0 * step + r, c]
        return channel_or_pixel_safe([h, w0], idx, idx, (1, 3, width, 8), (1, 3, width, cout), ana)

    assert safe(2, 2, 6) and safe(3, 3, 6)
    assert not safe(2, 3, 6)  # the group's pixels overlap the next group's
    assert not safe(4, 4, 6)  # groups straddle rows
    assert not safe(2, 2, 6, cout=9)  # a pixel's outputs would reach the next pixel's inputs
    idx = [zero, h, w0 * 2 + r, c]
    assert not channel_or_pixel_safe([h, w0], idx, idx, (1, 3, 6, 8), (1, 3, 6, 8))  # no ranges: not proven

    def safe_nchw(step: int, r_extent: int, width: int, cout: int = 8, hw_out: tuple[int, int] | None = None) -> bool:
        ana = tvm.sym.Analyzer()
        for v, ext in ((h, 3), (w0, width // step), (r, r_extent), (c, 8)):
            ana.bind(v, tvm.ir.Range.from_min_extent(0, ext))
        idx = [zero, c, h, w0 * step + r]
        return channel_or_pixel_safe([h, w0], idx, idx, (1, 8, 3, width), (1, cout, *(hw_out or (3, width))), ana)

    # NCHW: a group writes its own pixels' offsets (mod H * W), so more output channels are fine too
    assert safe_nchw(2, 2, 6) and safe_nchw(2, 2, 6, cout=16)
    assert not safe_nchw(2, 3, 6)  # overlapping groups
    assert not safe_nchw(4, 4, 6)  # groups straddle rows
    assert not safe_nchw(2, 2, 6, hw_out=(3, 4))  # output plane of another size


@settings(max_examples=10, deadline=None)
@given(h=st.integers(3, 8), w=st.integers(3, 8), pad_value=st.integers(-128, 127), seed=st.integers(0, 2**16))
def test_in_place_depthwise_pairs_its_interior_windows_exactly(tmp_path_factory, h, w, pad_value, seed):
    """An in-place 3x3 stride-1 depthwise kernel (a channel's plane copied, then its outputs) computes its interior
    outputs in pairs (tvmp_window2_s8, window_blocks.window_blocks); run in place it equals TVM."""
    from tvm_patch.codegen.c_kernels import mark_in_place
    from tvm_patch.export.inplace_conv import inplace_conv_pairs, inplace_conv_schedule

    src = _depthwise("NHWC", h, w, 3, 1, 1, pad_value)
    func = inplace_conv_schedule(lean_schedule(src), 1)
    pairs = inplace_conv_pairs(func, 1)
    assert pairs == [(0, 2)]
    csrc = emit_c({"kern": mark_in_place(func, pairs)})
    assert ("tvmp_window2_s8(" in csrc.code.replace(MICRO_KERNELS.read_text(), "")) == (w - 2 >= 2 * MIN_WINDOW_PAIRS)
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(-128, 128, (1, h, w, 3), dtype=np.int8), rng.integers(-128, 128, (3, 3, 3, 1), dtype=np.int8),
              np.zeros((1, h, w, 3), dtype=np.int8)]
    got = _c_in_place(csrc.code, arrays, csrc.workspace_bytes.get("kern", 0), tmp_path_factory.mktemp("dwip"))
    np.testing.assert_array_equal(got, _tvm_out(src, arrays))


@pytest.mark.parametrize("h, k, stride, pad, pays", [
    (6, 7, 2, 3, True),  # mcunet-in0's 7x7 stride 2 over 6 x 6: 9 outputs, all border windows (round 25)
    (3, 7, 2, 3, False),  # 2 x 2 outputs
    (3, 5, 1, 2, False),  # 5x5 over 3 x 3: measured 45 % slower through the copy
    (12, 5, 2, 2, True),  # 6 x 6 outputs
    (12, 3, 2, 1, False),  # 3x3 at stride 2: the strided window pairs
])
def test_padded_copy_pays_where_measured(h, k, stride, pad, pays):
    """Which depthwise layers take the padded copy (padded_copy_pays: window size, stride, outputs a channel)."""
    from tvm_patch.export.padded_copy import padded_copy_pays

    assert padded_copy_pays(_depthwise("NCHW", h, h, k, stride, pad, -128)) == pays


@settings(max_examples=14, deadline=None)
@given(layout=st.sampled_from(["NHWC", "NCHW"]), h=st.integers(1, 12), w=st.integers(1, 12), k=st.sampled_from([3, 5, 7]),
       stride=st.sampled_from([1, 2]), pad=st.integers(0, 3), pad_value=st.integers(-128, 127), seed=st.integers(0, 2**16))
@example(layout="NHWC", h=6, w=6, k=7, stride=1, pad=3, pad_value=-7, seed=0)  # mcunet-in3's late 7x7 layers
@example(layout="NCHW", h=11, w=11, k=7, stride=1, pad=3, pad_value=5, seed=1)
@example(layout="NCHW", h=6, w=6, k=7, stride=2, pad=3, pad_value=-128, seed=2)  # mcunet-in0's: rows of three
def test_padded_channel_copy_in_place_is_exact(tmp_path_factory, layout, h, w, k, stride, pad, pad_value, seed):
    """A depthwise kernel through a padded copy of each channel (padded_copy.py: the pad ring and the plane
    written once per channel, every window then read without a border test): its in-place pair is proven on
    that form, its workspace is the padded plane, and run in place it equals TVM."""
    from tvm_patch.codegen.c_kernels import mark_in_place
    from tvm_patch.export.inplace_conv import inplace_conv_pairs
    from tvm_patch.export.padded_copy import depthwise_windows, padded_copy_schedule

    if h + 2 * pad < k or w + 2 * pad < k:
        return  # no output
    src = _depthwise(layout, h, w, k, stride, pad, pad_value)
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    taps, outputs, strided = depthwise_windows(src)
    assert (taps, outputs) == (k * k, oh * ow) and depthwise_windows(_pointwise(4, 4, 8, 8)) == (0, 0, False)
    assert strided == (stride == 2) or oh * ow == 1  # (a single output's position may be folded away)
    func = padded_copy_schedule(src, 1)
    assert (func is src) == (pad == 0)  # no pad, no border window: nothing to do
    if pad == 0:
        return
    pairs = inplace_conv_pairs(func, 1)
    # channel by channel in place: NHWC always (channel c's writes are the offsets = c mod C), NCHW when the output
    # plane is no larger than the input's (channel c writes below (c + 1) * Ho * Wo)
    assert pairs == ([(0, 2)] if layout == "NHWC" or oh * ow <= h * w else [])
    csrc = emit_c({"kern": mark_in_place(func, pairs) if pairs else func})
    if layout == "NCHW" and (k, stride, ow) == (7, 2, 3):  # rows of three 7-wide stride-2 windows: one call
        assert "tvmp_window3_s8(" in csrc.code.replace(MICRO_KERNELS.read_text(), "")
    # the copy holds (a part of) one padded channel plane: a C local up to 64 bytes, else kernel workspace
    assert csrc.workspace_bytes.get("kern", 0) <= -(-(h + 2 * pad) * (w + 2 * pad) // 16) * 16
    rng = np.random.default_rng(seed)
    shape, wshape = ((1, h, w, 3), (k, k, 3, 1)) if layout == "NHWC" else ((1, 3, h, w), (3, 1, k, k))
    arrays = [rng.integers(-128, 128, shape, dtype=np.int8), rng.integers(-128, 128, wshape, dtype=np.int8),
              np.zeros((1, oh, ow, 3) if layout == "NHWC" else (1, 3, oh, ow), dtype=np.int8)]
    want = _tvm_out(src, [a.copy() for a in arrays])
    tmp = tmp_path_factory.mktemp("dwpad")
    if pairs and oh * ow <= h * w:  # the input's buffer holds the output: run in place
        got = _c_in_place(csrc.code, arrays, csrc.workspace_bytes.get("kern", 0), tmp)
    else:
        got = _c_out_of_place(csrc.code, arrays, csrc.workspace_bytes.get("kern", 0), tmp)
    np.testing.assert_array_equal(got, want)


def test_requant_specialised_only_where_every_call_has_nonpositive_shifts(shared_models):
    """nonpositive_shift_requant: a kernel calls tvmp_requant_rs for a shift parameter only when that constant is
    <= 0 in every element for every call; a positive element anywhere keeps tvmp_requant."""
    from tvm_patch.export import export_model
    from tvm_patch.export.api import nonpositive_shift_requant
    from tvm_patch.codegen.requant_kernels import requant_shift_params

    res = export_model(str(shared_models / "mlperf_tiny" / "kws_int8.tflite"), Path(tempfile.mkdtemp()) / "kws")
    prog, funcs = res.program, res.kernel_funcs
    name = next(n for n, f in funcs.items() if requant_shift_params(f))
    assert re.search(r"tvmp_requant_r[sb]", nonpositive_shift_requant(prog, {name: funcs[name]})[name].script())
    p = sorted(requant_shift_params(funcs[name]))[0]
    call = next(c for c in prog.calls if c.func == name)
    consts = list(prog.constants)
    bumped = consts[call.args[p].index].copy()
    bumped.flat[-1] = 1  # one channel with a left shift
    consts[call.args[p].index] = bumped
    other = dataclasses.replace(prog, constants=consts)
    assert not re.search(r"tvmp_requant_r[sb]", nonpositive_shift_requant(other, {name: funcs[name]})[name].script())


def test_requant_narrowed_only_where_the_accumulator_is_bounded(shared_models):
    """narrow_requant: tvmp_requant_rs_narrow (SMMULR on 2 x acc) only where |acc + bias| < 2^30 is proven: the
    int8 x int8 products of the reduction (2^14 each, times the reduction's extents) plus the largest constant
    bias over every call; a bias of 2^30 in one call keeps tvmp_requant_rs; tvmp_requant_rb where also every
    shift is in [-31, -1]."""
    from tvm_patch.codegen.requant_kernels import PRODUCT_BOUND, accumulator_bounds
    from tvm_patch.export import export_model
    from tvm_patch.export.api import nonpositive_shift_requant

    res = export_model(str(shared_models / "mlperf_tiny" / "kws_int8.tflite"), Path(tempfile.mkdtemp()) / "kws")
    prog, funcs = res.program, res.kernel_funcs
    def narrowed(script: str) -> bool:  # either bounded form (tvmp_requant_rb where every shift is <= -1)
        return "tvmp_requant_rs_narrow" in script or "tvmp_requant_rb" in script

    name = next(n for n, f in funcs.items() if narrowed(nonpositive_shift_requant(prog, {n: f})[n].script()))
    bounds = accumulator_bounds(funcs[name])
    assert bounds and all(b > 0 and b % PRODUCT_BOUND == 0 for _, b in bounds)
    call = next(c for c in prog.calls if c.func == name)
    func = funcs[name]
    bias = next(i for i, a in enumerate(call.args) if a.kind == "const" and prog.constants[a.index].dtype == np.int32
                and "+ " + str(func.params[i].name) in func.script())
    consts = list(prog.constants)
    bumped = consts[call.args[bias].index].copy()
    bumped.flat[0] = 2**30
    consts[call.args[bias].index] = bumped
    script = nonpositive_shift_requant(dataclasses.replace(prog, constants=consts), {name: func})[name].script()
    assert not narrowed(script) and "tvmp_requant_rs" in script
    # the rounding-add form only where every shift of every call is in [-31, -1]: a zero shift keeps the narrow one
    from tvm_patch.codegen.requant_kernels import requant_shift_params

    assert "tvmp_requant_rb" in nonpositive_shift_requant(prog, {name: func})[name].script()
    consts = list(prog.constants)
    shift = consts[call.args[sorted(requant_shift_params(func))[0]].index].copy()
    shift.flat[0] = 0
    consts[call.args[sorted(requant_shift_params(func))[0]].index] = shift
    script = nonpositive_shift_requant(dataclasses.replace(prog, constants=consts), {name: func})[name].script()
    assert "tvmp_requant_rs_narrow" in script and "tvmp_requant_rb" not in script
    # a residual add's requantizations: each bounded by its argument's bound + 1, so the outer one of their sum too
    from tvm_patch.codegen.requant_kernels import narrow_requant, right_shift_requant

    def residual(scale: int) -> tirx.PrimFunc:
        x, y = te.placeholder((4,), "int8", name="X"), te.placeholder((4,), "int8", name="Y")

        def rq(v: Any) -> Any:
            return tirx.call_pure_extern("int32", REQUANT_EXTERN, v, 1699529983, -2)

        out = te.compute((4,), lambda i: rq(rq(x[i].astype("int32") * scale + 17825792) + rq(y[i].astype("int32") * scale)),
                         name="out")
        return right_shift_requant(te.create_prim_func([x, y, out]), set())

    assert residual(2**20).script().count('"tvmp_requant_rs"') == 3
    assert narrow_requant(residual(2**20), {}).script().count('"tvmp_requant_rb"') == 3  # constant shift -2
    assert not narrowed(narrow_requant(residual(2**23), {}).script())  # 128 x 2^23 = 2^30
    # a dense layer's K = 12 products; none for products of wider operands (int16 x int8)
    assert [b for _, b in accumulator_bounds(lean_schedule(_matmul_requant(12, False, True)))] == [12 * PRODUCT_BOUND]
    a, w = te.placeholder((3, 12), "int16", name="A"), te.placeholder((5, 12), "int8", name="W")
    r = te.reduce_axis((0, 12), name="r")
    acc = te.compute((3, 5), lambda i, f: te.sum(a[i, r].astype("int32") * w[f, r].astype("int32"), axis=r), name="acc")
    assert accumulator_bounds(te.create_prim_func([a, w, acc])) == []


def test_bias_becomes_the_accumulators_initial_value(tmp_path):
    """bias_in_init: a dense kernel's accumulator starts at its bias (a constant parameter) and the epilogue adds
    nothing, the C equal to TVM's build of the original; unchanged where the bias is not a constant in every call
    or where the accumulator is also added to another parameter."""
    from tvm_patch.codegen.bias_init import bias_in_init

    func = lean_schedule(block_output_channels(_matmul_requant(12, False, extern=True, f_out=4), 2))
    folded = bias_in_init(func, {2})
    script = folded.script()
    assert "= bias[" in script and "+ bias[" not in script
    assert bias_in_init(func, set()).script() == func.script()
    rng = np.random.default_rng(3)
    arrays = [rng.integers(-128, 128, (3, 12), dtype=np.int8), rng.integers(-128, 128, (4, 12), dtype=np.int8),
              rng.integers(-(2**14), 2**14, 4, dtype=np.int32), np.full((3, 4), 77, dtype=np.int8)]
    got, want = _c_and_tvm(func, emit_c({"kern": folded}).code, arrays, tmp_path)
    np.testing.assert_array_equal(got, want)
    # two biases for one accumulator: nothing to fold
    a, w = te.placeholder((3, 12), "int8", name="A"), te.placeholder((4, 12), "int8", name="W")
    b, b2 = te.placeholder((4,), "int32", name="bias"), te.placeholder((4,), "int32", name="bias2")
    r = te.reduce_axis((0, 12), name="r")
    acc = te.compute((3, 4), lambda i, f: te.sum(a[i, r].astype("int32") * w[f, r].astype("int32"), axis=r), name="acc")
    out = te.compute((3, 4), lambda i, f: acc[i, f] + b[f], name="out")
    out2 = te.compute((3, 4), lambda i, f: acc[i, f] + b2[f], name="out2")
    two = lean_schedule(te.create_prim_func([a, w, b, b2, out, out2]))
    assert bias_in_init(two, {2, 3}).script() == two.script()


def test_dead_channels_get_a_small_bias(shared_models):
    """quiet_dead_channels: an output channel with all-zero weights and a bias of 2^30 (vww has such channels) gets
    the constants (4 t, 2^30, -1), t its requantized bias, which requantize to the same t (numpy reference), so the
    kernel's accumulator bound holds again and it keeps the narrow requantization; other channels unchanged."""
    from tvm_patch.export import export_model
    from tvm_patch.export.api import nonpositive_shift_requant
    from tvm_patch.export.dead_channels import channel_roles, quiet_dead_channels
    from tvm_patch.quant.reference import multiply_by_quantized_multiplier_ref as ref

    res = export_model(str(shared_models / "mlperf_tiny" / "kws_int8.tflite"), Path(tempfile.mkdtemp()) / "kws")
    prog, funcs = res.program, res.kernel_funcs
    name, call = next((c.func, c) for c in prog.calls
                      if channel_roles(funcs[c.func], {p for p, a in enumerate(c.args) if a.kind == "const"}))
    (pw, dw), (pb, db), (pm, dm), (ps, ds) = channel_roles(funcs[name], {p for p, a in enumerate(call.args) if a.kind == "const"})
    consts = list(prog.constants)
    w, b = consts[call.args[pw].index].copy(), consts[call.args[pb].index].copy()
    dead = [slice(None)] * w.ndim
    dead[dw] = 1
    w[tuple(dead)] = 0
    at = [0] * b.ndim
    at[db] = 1
    b[tuple(at)] = 2**30
    sh = consts[call.args[ps].index].copy()
    at = [0] * sh.ndim
    at[ds] = 1
    sh[tuple(at)] = -28  # as vww's dead channels: a small constant output
    consts[call.args[pw].index], consts[call.args[pb].index], consts[call.args[ps].index] = w, b, sh
    bumped = dataclasses.replace(prog, constants=consts)
    assert "tvmp_requant_r" not in nonpositive_shift_requant(bumped, {name: funcs[name]})[name].script().replace(
        "tvmp_requant_rs\"", "")  # the bias of 2^30 breaks the bound: the 64-bit form
    quiet = quiet_dead_channels(bumped, funcs)
    qcall = next(c for c in quiet.calls if c.func == name and c.args[pw] == call.args[pw])
    nb, nm, ns = (quiet.constants[qcall.args[p].index] for p in (pb, pm, ps))
    m, s = (bumped.constants[call.args[p].index] for p in (pm, ps))
    t = int(ref(np.array([2**30]), int(np.take(m, 1, axis=dm).item()), int(np.take(s, 1, axis=ds).item()))[0])
    assert (int(np.take(nb, 1, axis=db).item()), int(np.take(nm, 1, axis=dm).item()), int(np.take(ns, 1, axis=ds).item())) \
        == (4 * t, 2**30, -1)
    assert int(ref(np.array([4 * t]), 2**30, -1)[0]) == t
    assert 0 < abs(t) <= 2**16
    for arr, orig, dim in ((nb, b, db), (nm, m, dm), (ns, s, ds)):  # the other channels as they were
        assert np.array_equal(np.delete(arr, 1, axis=dim), np.delete(orig, 1, axis=dim))
    assert re.search(r"tvmp_requant_r(s_narrow|b)", nonpositive_shift_requant(quiet, {name: funcs[name]})[name].script())
