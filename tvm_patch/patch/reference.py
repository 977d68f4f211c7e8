"""Running a stage: a numpy reference (independent of TVM) and a helper that compiles and runs a PrimFunc."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import tirx

from tvm_patch.patch.stage import STAGE_INPUT, Add, Conv, Stage
from tvm_patch.patch.te_stage import param_arrays
from tvm_patch.quant.reference import multiply_by_quantized_multiplier_ref


def _to_nchw(stage: Stage, a: np.ndarray) -> np.ndarray:
    return a if stage.layout == "NCHW" else a.transpose(0, 3, 1, 2)


def _from_nchw(stage: Stage, a: np.ndarray) -> np.ndarray:
    return a if stage.layout == "NCHW" else a.transpose(0, 2, 3, 1)


def _conv_nchw(x: np.ndarray, w_oihw: np.ndarray, stride, padding, groups: int, pad_value) -> np.ndarray:
    """Grouped 2-D convolution (cross-correlation) in NCHW, accumulating in x's dtype."""
    n, c, h, w = x.shape
    o, cg, kh, kw = w_oihw.shape
    pt, pl, pb, pr = padding
    sh, sw = stride
    xp = np.full((n, c, h + pt + pb, w + pl + pr), pad_value, dtype=x.dtype)
    xp[:, :, pt : pt + h, pl : pl + w] = x
    ho = (h + pt + pb - kh) // sh + 1
    wo = (w + pl + pr - kw) // sw + 1
    xg = xp.reshape(n, groups, cg, *xp.shape[2:])
    wg = w_oihw.reshape(groups, o // groups, cg, kh, kw).astype(x.dtype)
    out = np.zeros((n, groups, o // groups, ho, wo), dtype=x.dtype)
    for ky in range(kh):
        for kx in range(kw):
            win = xg[:, :, :, ky : ky + sh * (ho - 1) + 1 : sh, kx : kx + sw * (wo - 1) + 1 : sw]
            out += np.einsum("ngchw,goc->ngohw", win, wg[:, :, :, ky, kx])
    return out.reshape(n, o, ho, wo)


def _oihw(stage: Stage, i: int, layer: Conv) -> np.ndarray:
    kl = stage.geometry[i].kernel_layout
    return layer.weight.transpose([kl.index(ch) for ch in "OIHW"])


def _act(v: np.ndarray, act: str) -> np.ndarray:
    if act == "relu":
        return np.maximum(v, 0)
    if act == "relu6":
        return np.clip(v, 0, 6)
    return v


def run_numpy(stage: Stage, x: np.ndarray) -> np.ndarray:
    """The stage output computed layer by layer with numpy (float64 for float32 stages, exact for int8)."""
    values = {STAGE_INPUT: _to_nchw(stage, np.asarray(x))}
    for i, layer in enumerate(stage.layers):
        src = values[stage.inputs[i][0]]
        if isinstance(layer, Conv):
            g = stage.geometry[i]
            w = _oihw(stage, i, layer)
            bias = np.zeros(g.c_out) if layer.bias is None else layer.bias
            if stage.dtype == "float32":
                acc = _conv_nchw(src.astype(np.float64), w, g.stride, g.padding, g.groups, 0.0)
                values[i] = _act(acc + bias.astype(np.float64)[None, :, None, None], layer.activation)
            else:
                q = layer.quant
                xs = src.astype(np.int64) - q.input_zero_point
                ws = w.astype(np.int64) - q.weight_zero_point
                acc = _conv_nchw(xs, ws, g.stride, g.padding, g.groups, 0) + bias.astype(np.int64)[None, :, None, None]
                mult = np.broadcast_to(q.multiplier, (g.c_out,))[None, :, None, None]
                shift = np.broadcast_to(q.shift, (g.c_out,))[None, :, None, None]
                r = multiply_by_quantized_multiplier_ref(acc.astype(np.int32), mult, shift)
                values[i] = np.clip(r.astype(np.int64) + q.output_zero_point, q.act_min, q.act_max).astype(np.int8)
        else:
            assert isinstance(layer, Add)
            other = values[layer.other]
            if stage.dtype == "float32":
                values[i] = _act(src + other, layer.activation)
            else:
                values[i] = add_int8_numpy(layer.quant, src, other)
    out = values[len(stage.layers) - 1]
    return _from_nchw(stage, out.astype(np.float32) if stage.dtype == "float32" else out)


def add_int8_numpy(q, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """TFLite int8 ADD of a (Add.input) and b (Add.other), numpy reference."""
    mq = multiply_by_quantized_multiplier_ref

    def scaled(v, k):
        s = (v.astype(np.int64) - q.input_zero_points[k]) * (1 << q.left_shift)
        return mq(s.astype(np.int32), q.input_multipliers[k], q.input_shifts[k]).astype(np.int64)

    raw = mq((scaled(a, 0) + scaled(b, 1)).astype(np.int32), q.output_multiplier, q.output_shift)
    return np.clip(raw.astype(np.int64) + q.output_zero_point, q.act_min, q.act_max).astype(np.int8)


def compile_func(func: tirx.PrimFunc, target: dict | None = None, fast: bool = False):
    """Compile one PrimFunc for the host (llvm) and return the callable.

    fast: LLVM opt-level 0 and no argument asserts, for tests that compile hundreds of tiny stages
    (about 0.18 s instead of 0.5 s each; LLVM time dominates, the TIR passes take about 0.07 s).
    """
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    target = dict(target or {"kind": "llvm"})
    config = {}
    if fast:
        target.setdefault("opt-level", 0)
        config["tirx.disable_assert"] = True
    with tvm.transform.PassContext(config=config):
        return tvm.compile(mod, target=target)["main"]


def run_tvm(func, stage: Stage, x: np.ndarray) -> np.ndarray:
    """Run a compiled stage PrimFunc (from `compile_func`, or a PrimFunc to compile) on input x."""
    if isinstance(func, tirx.PrimFunc):
        func = compile_func(func)
    args = [tvm.runtime.tensor(np.ascontiguousarray(x, dtype=stage.dtype))]
    args += [tvm.runtime.tensor(a) for a in param_arrays(stage)]
    out = tvm.runtime.empty(stage.output_shape, stage.dtype)
    func(*args, out)
    return out.numpy()
