"""Per-kernel features of an exported network: what a kernel's cost depends on, read from the exported
program (each call's TIR before scheduling, its tensors, the arena plan's in-place calls) and the emitted C
(which micro-kernels the kernel calls). The patch stage is one kernel with its own features (patch count,
patch input size, halo, the MACs it computes including the recomputed halos, its mix of layer kinds).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import tvm_ffi
from tvm import s_tir, tirx

from tvm_patch.codegen import C_TARGET
from tvm_patch.codegen.channel_rows import ROW_KERNEL
from tvm_patch.codegen.c_kernels import lower_plain
from tvm_patch.cost.trips import executed
from tvm_patch.export.kernel_info import kernel_info
from tvm_patch.names import PATCHES_ATTR, STAGE_LAYOUT_ATTR

# 4: a border position's pad store counted as the pad, not as what the in-image positions compute; branches that
# repeat a condition already evaluated counted apart (trips.py)
# 5: the copy / fill calls (an NCHW stage's runs, kernels round 15) counted apart: their word stores
# (``stores_call``, no longer in stores_copy / stores_const) and the calls (``run_calls``); tvmp_requant_rbzr counted
# as a requantization (it was missed since round 10)
# 6: the dot calls' MACs on weights widened in Flash (``dot_wide_macs``, ``x_wide_pw``; kernels round 16); a patch
# stage's ``nhwc`` from its layout (it was 0 for every stage)
# 7: the dot calls' MACs on activations they sign-extend themselves (``dot_s8act_macs``, ``x_s8act_pw``): since
# kernels round 17 the calls on activations widened before them (``tvmp_dot_q15*``) read them by LDRD, so these cost
# more per MAC; a term of its own on top of ``dot_simd_macs`` (the stage model's coefficients cannot go negative)
# 8: the depthwise windows computed four a call (``window4_macs``, ``x_window4_share``; kernels round 18)
# 9: the copy / fill calls whose length varies with a patch loop (a stage's border runs) counted value by value
# (they counted 0 before: mcunet-in0's 4x4 cache stage, 560,000 instructions unpriced); the 64-bit multiplications
# of stored values (``mul64``: a stage's residual adds, TVM's fixed-point arithmetic spelt out)
# 10: a low-K 1x1 convolution's channel along a row (``tvmp_row_q15w_px2``, kernels round 22) counted as the nest it
# replaces: a two-pixel dot per pair (dot calls and elements, widened MACs), per output a requantization, a clamp and
# a store
# 11: a constant stored into a local of at most 4 elements (an accumulator's initialisation, which the compiler keeps
# in a register: a TE-form stage's one-element locals) counted apart as ``stores_reg``, no longer in stores_const
# 12: a nest of loops storing an int8 constant through one unit-stride run (an NHWC stage's padding rows and columns,
# ``for q < 107: for c < 3: input_patch[r * 321 + q * 3 + c] = -128``, which GCC compiles to word stores) counted as
# its words and tail bytes (``stores_fill``) and runs (``fill_runs``), no longer ``stores_const``:
# vww 96 3x3 split 14 recompute (M7), its 52 fill nests measured 0.44 M instructions and predicted 6.8 M at the
# stores_const price; the stage's stores_const 833,544 -> 14,752 (trips.py _fill_run)
FEATURES_VERSION = 12
OPS = ("conv1x1", "convkxk", "depthwise", "dense", "pool", "add", "other", "patch_stage")
_REDUCE = 2
# The numeric features, in the regressor's column order (the op one-hot comes first).
NUMERIC = ("nhwc", "out_h", "out_w", "out_c", "in_c", "kernel", "stride", "groups", "log_macs", "log_work",
           "bytes_in", "bytes_out", "bytes_weights", "inplace", "uses_dot", "uses_sum", "uses_requant", "epilogue_blocks",
           "patches", "patch_in_h", "halo", "stage_layers", "stage_dw_share", "stage_1x1_share", "halo_cache",
           # how the kernel runs (trips.py, per unit of work): scalar MACs, element stores, dot-product calls
           # and their length, register-blocked share, depthwise windows and their length, requantizations
           "x_mac_pw", "x_store_pw", "x_dot_pw", "x_dot_len", "x_rows_share", "x_window_pw", "x_window_len",
           "x_requant_pw", "x_pad_pw", "x_wide_pw", "x_s8act_pw", "x_window4_share")
# The executed counts a row keeps (``exec``), the patch stage's linear model's terms (latency.py)
EXEC_KEYS = ("mac", "mac_flat", "red_loops", "stores", "dot_calls", "dot_elems", "rows_calls", "window_calls",
             "window_elems", "requant", "pad_calls", "sat", "dot_simd_macs", "dot_tail_macs", "mac_1x1", "mac_dw",
             "mac_kxk", "mac_blk", "window_macs", "stores_const", "stores_reg", "stores_copy", "stores_float",
             "stores_int", "branches", "branches_varying",
             "branches_skipped", "branches_repeated", "stores_call", "run_calls", "dot_wide_macs", "dot_s8act_macs",
             "window4_macs", "mul64", "stores_fill", "fill_runs")


# Derived when a row becomes a vector (a record keeps what was measured): ``even_w``, whether the output width is
# even, which the two-pixel micro-kernels need (blocking.block_pixels: 1x1 and k x k convolutions run in pixel
# pairs; kws's 25 x 5 planes run one pixel at a time, about 20 % more instructions per MAC). The dot-product
# features cannot tell the two apart: a pair over 2 channels and a pixel over 4 make the same calls.
DERIVED: dict[str, Callable[[dict[str, Any]], float]] = {"even_w": lambda row: float(int(row["out_w"]) % 2 == 0)}


def columns() -> list[str]:
    """The regressor's feature columns."""
    return [f"op_{o}" for o in OPS] + list(NUMERIC) + list(DERIVED)


def work(row: dict[str, Any]) -> int:
    """The unit a kernel's cost is regressed per: its MACs, or for a kernel without MACs the bytes it moves."""
    return max(int(row["macs"]), int(row["bytes_in"] + row["bytes_out"]), 1)


def vector(row: dict[str, Any]) -> list[float]:
    """``row`` as the regressor's input vector (see columns())."""
    return [1.0 if row["op"] == o else 0.0 for o in OPS] + [float(row[k]) for k in NUMERIC] + \
        [f(row) for f in DERIVED.values()]


def _c_bodies(source: str) -> dict[str, str]:
    """Function name -> body text of every top-level C function definition in ``source``."""
    out: dict[str, str] = {}
    for m in re.finditer(r"^[A-Za-z_][\w \*]*?\b(\w+)\(([^;{]*)\)\s*\{\n(.*?)^\}", source, re.S | re.M):
        out[m.group(1)] = m.group(3)
    return out


def _blocks(func: tirx.PrimFunc) -> list[tuple[s_tir.SBlock, int, int]]:
    """Every block with the product of the extents of the loops around it and the number of loops directly
    around it (since the last statement sequence: a reduction's own loops)."""
    found: list[tuple[s_tir.SBlock, int, int]] = []

    def visit(node: Any, trips: int, chain: int) -> None:
        if isinstance(node, tirx.For):
            ext = node.extent
            visit(node.body, trips * (int(ext.value) if hasattr(ext, "value") else 1), chain + 1)
        elif isinstance(node, s_tir.SBlockRealize):
            found.append((node.block, trips, chain))
            visit(node.block.body, trips, 0)
        elif isinstance(node, tirx.SeqStmt):
            for s in node.seq:
                visit(s, trips, 0)
        elif hasattr(node, "body"):
            visit(node.body, trips, chain)

    visit(func.body, 1, 0)
    return found


def _iter(block: s_tir.SBlock) -> tuple[dict[str, int], dict[str, int]]:
    spatial, reduce = {}, {}
    for iv in block.iter_vars:
        (reduce if int(iv.iter_type) == _REDUCE else spatial)[iv.var.name.removeprefix("v_")] = int(iv.dom.extent)
    return spatial, reduce


def _base_row(op: str) -> dict[str, Any]:
    return {k: 0 for k in NUMERIC} | {"op": op, "macs": 0, "kernel": 1, "stride": 1, "groups": 1}


def _stage_row(func: tirx.PrimFunc, patches: tuple[int, int], in_shape: tuple[int, ...],
               halo: str = "recompute") -> dict[str, Any]:
    """The patch stage: MACs over all patches (halos recomputed), layer mix, patch input size (recompute mode
    written as a loop nest, `cache_stage.build_recompute_stage`: from its `input_patch` buffer, having no block)."""
    row = _base_row("patch_stage")
    macs = {"dw": 0, "1x1": 0, "kxk": 0}
    layers = 0
    patch_in = 0
    for block, trips, chain in _blocks(func):
        if block.name_hint == "input_patch":
            patch_in = max(patch_in, trips // max(1, math.prod(patches)))
        if block.name_hint.endswith("_acc"):
            # the loops right around the accumulation are its reduction: 1 = a 1x1 convolution over the input
            # channels, 2 = a depthwise k x k, 3 = a k x k convolution over the input channels
            layers += 1
            macs[{1: "1x1", 2: "dw"}.get(chain, "kxk")] += trips
    if not patch_in and halo != "cache":
        allocs = []
        tvm_ffi.structural_walk(func.body, (tirx.AllocBuffer, allocs.append))
        patch_in = next((math.prod(int(d) for d in a.buffer.shape) for a in allocs if a.buffer.name == "input_patch"), 0)
    total = sum(macs.values())
    chans, _, height = sorted(in_shape[1:4]) if len(in_shape) == 4 else (1, 1, 1)  # NCHW or NHWC image
    side = int(round(math.sqrt(patch_in / chans))) if patch_in else 0  # input_patch: chans x side x side
    row.update(macs=total, patches=math.prod(patches), stage_layers=layers,
               stage_dw_share=macs["dw"] / total if total else 0.0,
               stage_1x1_share=macs["1x1"] / total if total else 0.0,
               patch_in_h=side, halo=max(0, side - math.ceil(height / patches[0])),
               out_h=0, out_w=0, nhwc=int(func.attrs is not None and str(func.attrs.get(STAGE_LAYOUT_ATTR, "")) == "NHWC"))
    return row


def _kernel_row(func: tirx.PrimFunc, in_shapes: list[tuple[int, ...]]) -> dict[str, Any]:
    info = kernel_info(func)
    blocks = [b for b, _, _ in _blocks(func) if b.name_hint != "root"]
    mac = next((b for b in blocks if "conv" in b.name_hint or "matmul" in b.name_hint or "dense" in b.name_hint), None)
    name = mac.name_hint if mac is not None else " ".join(b.name_hint for b in blocks)
    if info.macs and mac is not None:
        spatial, reduce = _iter(mac)
        if "matmul" in name or "dense" in name:
            op = "dense"
        elif "group" in name and reduce.get("rc", 1) == 1:
            op = "depthwise"
        else:
            op = "conv1x1" if reduce.get("ry", 1) == reduce.get("rx", 1) == 1 else "convkxk"
        row = _base_row(op)
        row["nhwc"] = int("nhwc" in name)
        out_h, out_w = spatial.get("yy", 1), spatial.get("xx", 1)
        out_c = spatial.get("ff", spatial.get(list(spatial)[-1], 1) if spatial else 1)
        groups = out_c if op == "depthwise" else 1
        in_h = 1
        if in_shapes and len(in_shapes[0]) == 4:
            in_h = in_shapes[0][1] if "nhwc" in name else in_shapes[0][2]
        in_c = math.prod(reduce.values()) if op == "dense" else reduce.get("rc", 1) * groups
        row.update(out_h=out_h, out_w=out_w, out_c=out_c, in_c=in_c,
                   kernel=max(reduce.get("ry", 1), reduce.get("rx", 1)), groups=groups,
                   stride=max(1, round(in_h / out_h)) if out_h else 1, macs=info.macs)
    else:
        op = "pool" if "pool" in name else "add" if re.search(r"\badd|T_add", name) and len(in_shapes) >= 2 else "other"
        row = _base_row(op)
    row["epilogue_blocks"] = len(blocks)
    return row


def exec_counts(func: tirx.PrimFunc) -> dict[str, float]:
    """The executed operations of one lowered kernel, summed into EXEC_KEYS (see trips.executed),
    ``all_macs``: the scalar MACs and those of the micro-kernel calls, and ``wmacs:<buffer>``: the MACs reading
    each weight buffer (the patch stage's per-layer MACs)."""
    e = executed(func)
    out = dict.fromkeys(EXEC_KEYS, 0.0)
    out["all_macs"] = float(e["micro_macs"])
    for k, v in e.items():
        if k in ("mac_flat", "red_loops"):
            out[k] += v
        elif k == "micro_macs":
            continue
        elif k == "mac_loop":
            continue
        elif k.startswith("mac_"):  # scalar MACs, in all and by the shape of their reduction
            out["mac"] += v
            out[k] += v
            out["all_macs"] += v
        elif k == "stores":
            out["stores"] += v
        elif k.startswith("call_tvmp_dot"):
            out["dot_calls"] += v
            out["rows_calls"] += v if "rows" in k else 0
        elif k.startswith("elems_tvmp_dot"):
            out["dot_elems"] += v
        elif k == "call_tvmp_window_s8":
            out["window_calls"] += v
        elif k in ("call_tvmp_window2_s8", "call_tvmp_window2_s8w"):  # two windows per call
            out["window_calls"] += 2 * v
        elif k in ("call_tvmp_window4_s8", "call_tvmp_window4_s8w"):  # four
            out["window_calls"] += 4 * v
        elif k in ("elems_tvmp_window_s8", "elems_tvmp_window2_s8", "elems_tvmp_window2_s8w", "elems_tvmp_window4_s8",
                   "elems_tvmp_window4_s8w"):
            out["window_elems"] += v
        elif k in ("call_tvmp_requant", "call_tvmp_requant_rs", "call_tvmp_requant_rb", "call_tvmp_requant_rbz",
                   "call_tvmp_requant_rbzr", "call_tvmp_requant_rs_narrow"):
            out["requant"] += v
        elif k in ("call_tvmp_copy_s8", "call_tvmp_fill_s8"):
            out["run_calls"] += v
        elif k in ("call_tvmp_pad_rows", "call_tvmp_pad_rows_w"):
            out["pad_calls"] += v
        elif k == "call_tvmp_sat_s8":
            out["sat"] += v
        elif k in ("dot_simd_macs", "dot_tail_macs", "dot_wide_macs", "dot_s8act_macs", "window_macs",
                   "window4_macs", "mul64", "fill_runs") or k.startswith(("stores_", "branches")):
            out[k] += v
        elif k.startswith("wmacs:"):  # per weight buffer: the patch stage's MACs layer by layer
            out[k] = float(v)
    return out


def _exec_features(row: dict[str, Any]) -> None:
    """The per-unit-of-work "how it runs" columns of ``row`` from its ``exec`` counts."""
    e, w = row["exec"], work(row)
    row.update(x_mac_pw=e["mac"] / w, x_store_pw=e["stores"] / w, x_dot_pw=e["dot_calls"] / w,
               x_dot_len=e["dot_elems"] / e["dot_calls"] if e["dot_calls"] else 0.0,
               x_rows_share=e["rows_calls"] / e["dot_calls"] if e["dot_calls"] else 0.0,
               x_window_pw=e["window_calls"] / w,
               x_window_len=e["window_elems"] / e["window_calls"] if e["window_calls"] else 0.0,
               x_requant_pw=e["requant"] / w, x_pad_pw=e["pad_calls"] / w, x_wide_pw=e["dot_wide_macs"] / w,
               x_s8act_pw=e["dot_s8act_macs"] / w,
               x_window4_share=e["window4_macs"] / e["window_macs"] if e["window_macs"] else 0.0)


def kernel_rows(result: Any, c_source: str, halo: str = "recompute") -> list[dict[str, Any]]:
    """One feature row per kernel call of an ExportResult (``result.program``, ``result.arena_plan``), in call
    order; ``c_source`` is the exported model.c (micro-kernel calls per function). The kernels are lowered
    once more as the C export lowers them (a second or so) to count what each one executes."""
    prog = result.program
    bodies = _c_bodies(c_source)
    lowered, _ = lower_plain(result.kernel_funcs, C_TARGET)
    counts = {name: exec_counts(lowered[name]) for name in result.kernel_funcs}
    inplace = set(result.arena_plan.inplace_calls)
    rows = []
    for k, call in enumerate(prog.calls):
        func = prog.funcs[call.func]
        in_shapes = [prog.tensors[a.index].shape for a in call.inputs if a.kind == "tensor"]
        if func.attrs is not None and PATCHES_ATTR in func.attrs:
            rows_cols = tuple(int(x) for x in func.attrs[PATCHES_ATTR])
            row = _stage_row(func, rows_cols, in_shapes[0] if in_shapes else (1, 1, 1, 1), halo)
        else:
            row = _kernel_row(func, in_shapes)
        row["bytes_in"] = sum(prog.tensors[a.index].nbytes for a in call.inputs if a.kind == "tensor")
        row["bytes_out"] = sum(prog.tensors[a.index].nbytes for a in call.outputs if a.kind == "tensor")
        row["bytes_weights"] = sum(prog.constants[a.index].nbytes for a in call.inputs if a.kind == "const")
        row["inplace"] = int(k in inplace)
        row["exec"] = counts[call.func]
        if row["op"] == "patch_stage":
            row["halo_cache"] = int(halo == "cache")
            # what executes (trips.py: border checks evaluated), not the sblock walk's (which sees no MACs in the
            # cache mode's loops nor in micro-kernel calls, and counts the out-of-image positions of the borders)
            row["macs"] = int(round(row["exec"]["all_macs"])) or row["macs"]
            if not row["stage_layers"]:  # layers with weights: one int8 weight constant each
                row["stage_layers"] = sum(prog.constants[a.index].dtype == "int8" for a in call.inputs
                                          if a.kind == "const")
        body = bodies.get(call.func, "")
        # plain, register-blocked, widened; a channel along a row (its dot and its requantization inside)
        rows_fused = body.count(ROW_KERNEL + "(")
        row["uses_dot"] = len(re.findall(r"\btvmp_dot(_s8\w*|_q15\w*|4)\(", body)) + rows_fused
        row["uses_sum"] = body.count("tvmp_sum_s8(")
        # general, right-shift only, bounded (with the zero point, on a stored right shift)
        row["uses_requant"] = len(re.findall(r"\btvmp_requant(_rs|_rbz?|_rbzr|_rs_narrow)?\(", body)) + rows_fused
        row["log_macs"] = math.log1p(row["macs"])
        row["log_work"] = math.log(work(row))
        _exec_features(row)
        row["func"] = call.func
        rows.append(row)
    return rows
