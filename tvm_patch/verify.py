"""`tvm-patch verify`: the patched module against the unpatched one, on seeded inputs.

A quantized model as imported (int8 QDQ ONNX, int8 TFLite) is first lowered by LowerToInteger, and both
modules are that lowered one, unpatched and patched: the split names the same layers in the imported and the
lowered graph (`tvm_patch.graph`). int8 outputs, and every output of an integer-lowered module (a float
logit dequantized from the same int8 values), must be equal bit for bit; float32 outputs of float models
within 1e-5 relative (largest absolute difference over the largest reference magnitude).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from tvm_patch.names import QPARAMS_ATTR
from tvm_patch.patch.from_graph import lower_for_patching, needs_integer_lowering
from tvm_patch.transform.patch_stage import PatchStage

FLOAT_RTOL = 1e-5
LLVM = {"kind": "llvm"}


@dataclass
class VerifyResult:
    """Outcome of a comparison on `inputs` seeded inputs."""

    inputs: int
    max_abs_diff: float
    max_rel_diff: float
    dtype: str
    passed: bool
    detail: str = ""


def compile_vm(mod: tvm.IRModule) -> relax.VirtualMachine:
    """Build a Relax module for the host CPU and return its VM."""
    ex = tvm.compile(mod, target=tvm.target.Target(LLVM))
    return relax.VirtualMachine(ex, tvm.cpu())


def seeded_inputs(func: relax.Function, n: int, seed: int = 0) -> list[list[np.ndarray]]:
    """n sets of inputs for `func`: uniform int8 over its range, or uniform [-1, 1) for float."""
    rng = np.random.default_rng(seed)
    sets = []
    for _ in range(n):
        args = []
        for p in func.params:
            shape = tuple(int(d) for d in p.ty.shape.values)
            dtype = str(p.ty.dtype)
            if dtype.startswith("int") or dtype.startswith("uint"):
                info = np.iinfo(dtype)
                args.append(rng.integers(info.min, info.max + 1, size=shape, dtype=dtype))
            else:
                args.append(rng.uniform(-1, 1, size=shape).astype(dtype))
        sets.append(args)
    return sets


def run_vm(vm: relax.VirtualMachine, args: list[np.ndarray]) -> list[np.ndarray]:
    out = vm["main"](*[tvm.runtime.tensor(a) for a in args])
    if isinstance(out, (list, tuple)) or type(out).__name__ in ("Array", "Tuple"):
        return [o.numpy() for o in out]
    return [out.numpy()]


def compare(ref: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, float, str]:
    """(largest absolute difference, the same relative to the largest reference value, dtype)."""
    abs_diff, rel_diff, dtype = 0.0, 0.0, str(ref[0].dtype)
    for r, g in zip(ref, got):
        if r.shape != g.shape:
            return float("inf"), float("inf"), dtype
        d = float(np.max(np.abs(r.astype(np.float64) - g.astype(np.float64)))) if r.size else 0.0
        scale = float(np.max(np.abs(r.astype(np.float64)))) if r.size else 0.0
        abs_diff = max(abs_diff, d)
        rel_diff = max(rel_diff, d / scale if scale > 0 else (0.0 if d == 0 else float("inf")))
    return abs_diff, rel_diff, dtype


def verify_patch(mod: tvm.IRModule, patches: int, split: int | str, n_inputs: int = 3,
                 seed: int = 0, halo: str = "recompute") -> VerifyResult:
    """Compare `mod` with `PatchStage(split, patches, halo)(mod)` on n_inputs seeded inputs.

    A quantized model as imported is lowered by LowerToInteger first (`lower_for_patching`), and then both
    are compared bit for bit; `detail` says so."""
    lowered = needs_integer_lowering(mod)
    if lowered:
        mod = lower_for_patching(mod)
    integer = lowered or (mod["main"].attrs is not None and QPARAMS_ATTR in mod["main"].attrs)
    patched = PatchStage(split, (patches, patches), halo)(mod)
    vm_ref, vm_patch = compile_vm(mod), compile_vm(patched)
    worst_abs, worst_rel, dtype = 0.0, 0.0, ""
    for args in seeded_inputs(mod["main"], n_inputs, seed):
        a, r, dtype = compare(run_vm(vm_ref, args), run_vm(vm_patch, args))
        worst_abs, worst_rel = max(worst_abs, a), max(worst_rel, r)
    exact = integer or not dtype.startswith("float")
    passed = worst_abs == 0 if exact else worst_rel <= FLOAT_RTOL
    rule = "bit-exact" if exact else f"relative difference <= {FLOAT_RTOL:g}"
    if lowered:
        rule += " (both after LowerToInteger)"
    return VerifyResult(n_inputs, worst_abs, worst_rel, dtype, passed, rule)
