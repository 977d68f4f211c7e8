"""Plain C (and bare ARM objects) out of TIR PrimFuncs: no TVM header, no packed API, no allocation.

Each PrimFunc becomes ``void name(const int8_t *restrict A, ..., int8_t *restrict out, uint8_t *restrict
workspace)``: one pointer per buffer parameter (``const`` when the kernel never writes it), scalar
parameters as C scalars, and, when the kernel has intermediate buffers, one caller-provided workspace
pointer. The whole-network driver places every kernel's workspace in its static arena.

How (TVM 0.27):

1. ``BindTarget`` then the lowering passes of ``tvm.s_tir.pipeline.default_s_tir_pipeline`` (the
   pipeline ``tvm.compile`` runs on a PrimFunc) minus the packed API's, the micro-kernel rewrites among them
   (``lowering``).
2. Plain signature: every Buffer-typed parameter becomes a pointer Var, bound back to the buffer with
   a ``DeclBuffer`` at the top of the body.
3. Workspace: every ``AllocBuffer`` becomes a ``DeclBuffer`` whose data is ``workspace + offset``, in a stack
   discipline or the kernel builder's own plan; small buffers stay C locals (``workspace``).
4. ``FP8StorageLegalize``, ``BF16StorageLegalize``, ``LowerIntrin`` (the rest of the host
   finalization, ``lowering.finalize_passes``): ``q_multiply_shift`` becomes plain 64-bit integer arithmetic.
5. ``target.build.c`` / ``target.build.llvm``.

Post-processing of the C text (unavoidable: the C host backend always writes TVM ``#include`` lines, a
``__tvm_ffi__library_ctx`` global, ``TVM_DLL``/``extern "C"`` prefixes, and no ``restrict``): only
the function *bodies* are taken from TVM's output; the translation unit (standard includes,
signatures with ``const``/``restrict``) is written here. Anything else TVM emits at file scope makes
:func:`emit_c` fail rather than pass silently. One more rewrite keeps float kernels exact: the backend
prints float constants with 7 significant digits (``-3.402823e+38f`` is not ``-FLT_MAX``), so before
the build every float constant that would not survive that printing is replaced by a marker call,
and the marker by a C99 hexadecimal literal afterwards.
"""

from __future__ import annotations

import math
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir import PointerType, PrimType
from tvm.tirx.buffer import is_buffer_var

from tvm_patch.codegen.c_types import C_TYPES, PlainCError, c_float_literal, const_shape, dtype_str, to_f32
from tvm_patch.codegen.lowering import finalize_passes, lower_tir
from tvm_patch.codegen.outline import outline_nests
from tvm_patch.codegen.peel_patches import peel_patches
from tvm_patch.codegen.weight_sums import SUM_TABLES_ATTR
from tvm_patch.codegen.workspace import fixed_plan, plan_workspace, stack_scratch_bytes, zero_locals
from tvm_patch.names import ALIASED_PARAMS

__all__ = [
    "CParam",
    "CFunction",
    "CSource",
    "C_TARGET",
    "ARM_TARGET",
    "lower_plain",
    "emit_c",
    "emit_object",
    "undefined_symbols",
]

C_TARGET: dict[str, Any] = {"kind": "c"}
ARM_TARGET: dict[str, Any] = {
    "kind": "llvm",
    "mtriple": "thumbv7em-none-eabihf",
    "mcpu": "cortex-m7",
    "mfloat-abi": "hard",
}

_C_KEYWORDS = frozenset(
    "auto break case char const continue default do double else enum extern float for goto if inline int "
    "long register restrict return short signed sizeof static struct switch typedef union unsigned void "
    "volatile while bool true false".split()
)

# C99 <math.h> functions the C backend may call.
_MATH_FUNCS = frozenset(
    f + s
    for f in (
        "acos asin atan atan2 cos sin tan acosh asinh atanh cosh sinh tanh exp exp2 expm1 log log10 log2 "
        "log1p pow sqrt cbrt hypot erf erfc tgamma lgamma ceil floor fmod trunc round lround nearbyint rint "
        "lrint fabs fmin fmax fma copysign nextafter ldexp frexp modf"
    ).split()
    for s in ("", "f")
) | {"isnan", "isinf", "isfinite", "signbit", "INFINITY", "NAN"}


# The C micro-kernels exported kernels may call (tvmp_requant, tvmp_dot_s8*, tvmp_sum_s8, tvmp_pad_rows): inlined
# into model.c.
MICRO_KERNELS = Path(__file__).with_name("tvmp_kernels.h")
# A call to any function the header defines (inline ones and the register-blocked ones its macros make) pulls the
# header into the kernels' C; the names come from the header itself, so a new micro-kernel needs no list here.
MICRO_KERNEL_NAMES = tuple(sorted(set(re.findall(
    r"^(?:TVMP_INLINE [\w ]+?\**|TVMP_\w+_KERNEL\()(tvmp_\w+)", MICRO_KERNELS.read_text(), re.M))))
MICRO_KERNEL_CALL = r"\b(" + "|".join(MICRO_KERNEL_NAMES) + r")\("



def mark_in_place(func: tirx.PrimFunc, pairs: Iterable[tuple[int, int]]) -> tirx.PrimFunc:
    """``func`` for a driver that may run it with the parameter ``pairs`` overlapping (an in-place input and
    output, or one buffer passed twice): no ``restrict`` on those parameters (nor the workspace); the others
    (constants in Flash, never written) keep theirs, so the C compiler still hoists loads of weights and
    per-channel constants across stores."""
    aliased = sorted({i for pair in pairs for i in pair})
    return func.with_attr("tirx.noalias", False).with_attr(ALIASED_PARAMS, [tirx.IntImm("int32", i) for i in aliased])


@dataclass(frozen=True)
class CParam:
    """One C parameter. ``role``: "input" (read only, ``const``), "output" (written), "scalar", "workspace"."""

    name: str
    c_type: str
    pointer: bool
    role: str
    dtype: str
    shape: tuple[int, ...] | None = None

    @property
    def decl(self) -> str:
        if not self.pointer:
            return f"{self.c_type} {self.name}"
        const = "const " if self.role == "input" else ""
        return f"{const}{self.c_type} *restrict {self.name}"


@dataclass(frozen=True)
class CFunction:
    """A kernel's C interface: its parameters in call order and the workspace bytes it needs."""

    name: str
    params: tuple[CParam, ...]
    workspace_bytes: int
    noalias: bool = True
    aliased: frozenset[int] | None = None  # without noalias: the params that may overlap (None: all of them)
    stack_scratch_bytes: int = 0  # its large C locals' stack (widened pixel pairs, pixel windows), not workspace
    # its trailing pointer parameters (before the workspace) that are weight-sum tables the export fills:
    # (weight parameter, row length, pad) each (codegen/weight_sums.py)
    weight_sums: tuple[tuple[int, int, int], ...] = ()

    @property
    def prototype(self) -> str:
        decls = [p.decl if self.noalias or (self.aliased is not None and i not in self.aliased)
                 else p.decl.replace(" *restrict ", " *") for i, p in enumerate(self.params)]
        return f"void {self.name}({', '.join(decls) or 'void'})"


@dataclass(frozen=True)
class CSource:
    """A C99 translation unit with the kernels' definitions, plus their interfaces.

    The workspace pointer handed to a kernel must be aligned to ``workspace_align`` bytes and point to
    ``functions[name].workspace_bytes`` bytes the kernel may clobber.
    """

    code: str
    functions: dict[str, CFunction]
    workspace_align: int

    @property
    def workspace_bytes(self) -> dict[str, int]:
        return {n: f.workspace_bytes for n, f in self.functions.items()}

    def header(self, guard: str = "TVM_PATCH_KERNELS_H") -> str:
        """Prototypes of all kernels, for the driver's translation unit."""
        protos = "\n".join(f.prototype + ";" for f in self.functions.values())
        return f"#ifndef {guard}\n#define {guard}\n#include <stdint.h>\n\n{protos}\n\n#endif\n"


def unique_identifier(ident: str, taken: set[str]) -> str:
    """`ident`, or `ident_1`, `ident_2`, ... : the first one not in `taken`, which it is then added to."""
    base, k = ident, 1
    while ident in taken:
        ident = f"{base}_{k}"
        k += 1
    taken.add(ident)
    return ident


def _c_identifier(name: str, taken: set[str]) -> str:
    ident = re.sub(r"\W", "_", name) or "p"
    if ident[0].isdigit() or ident in _C_KEYWORDS:
        ident = "p_" + ident
    return unique_identifier(ident, taken)



def _is_op(expr: Any, name: str) -> bool:
    return isinstance(expr, tvm.ir.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name



def _written_roots(body: Any, ptr_params: list[Any], workspace: Any | None) -> set[int] | None:
    """Indices of pointer params the body may write, or None when that cannot be told."""
    data_of: dict[Any, Any] = {}
    stores: list[Any] = []
    escapes = [False]
    escaping_ops = {"tirx.tvm_access_ptr", "tirx.address_of", "tirx.call_extern", "tirx.call_packed", "tirx.call_cpacked"}

    def on_decl(stmt: Any) -> tvm_ffi.WalkResult:
        data_of[stmt.buffer] = stmt.data
        return tvm_ffi.WalkResult.ADVANCE

    def on_store(stmt: Any) -> tvm_ffi.WalkResult:
        stores.append(stmt.buffer)
        return tvm_ffi.WalkResult.ADVANCE

    def on_call(expr: Any) -> tvm_ffi.WalkResult:
        if isinstance(expr.op, tvm.ir.Op) and expr.op.name in escaping_ops:
            escapes[0] = True
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(
        body, [(tirx.DeclBuffer, on_decl), (tirx.BufferStore, on_store), (tvm.ir.Call, on_call)], order="pre"
    )
    if escapes[0]:
        return None

    def root(buf: Any, depth: int = 0) -> int | None:
        data = data_of.get(buf)
        if data is None or depth > 64:
            return None
        for i, p in enumerate(ptr_params):
            if data.same_as(p):
                return i
        if workspace is not None and (data.same_as(workspace) or (_is_op(data, "tirx.handle_add_byte_offset") and data.args[0].same_as(workspace))):
            return -1
        if _is_op(data, "tirx.buffer_data"):
            return root(data.args[0], depth + 1)
        return None

    written: set[int] = set()
    for buf in stores:
        r = root(buf)
        if r is None:
            return None
        if r >= 0:
            written.add(r)
    return written


def _to_plain(name: str, func: tirx.PrimFunc, workspace_align: int) -> tuple[tirx.PrimFunc, CFunction]:
    """Step 2 and 3: pointer parameters, AllocBuffer -> workspace offsets; the C interface."""
    taken: set[str] = set()
    new_params: list[Any] = []
    decls: list[Any] = []
    info: list[dict[str, Any]] = []
    ptr_params: list[Any] = []
    for p in func.params:
        if is_buffer_var(p):
            dtype = dtype_str(p.ty.dtype)
            if dtype not in C_TYPES:
                raise PlainCError(f"{name}: parameter {p.name!r} has dtype {dtype}, not supported in plain C")
            shape = const_shape(p, f"{name}: parameter")
            if len(p.strides) and list(p.strides) != _compact_strides(shape):
                raise PlainCError(f"{name}: parameter {p.name!r} is strided; only compact buffers")
            if p.elem_offset is not None and not (isinstance(p.elem_offset, tirx.IntImm) and int(p.elem_offset) == 0):
                raise PlainCError(f"{name}: parameter {p.name!r} has an element offset")
            v = tvm.ir.Var(_c_identifier(p.name, taken), PointerType(PrimType(dtype)))
            new_params.append(v)
            ptr_params.append(v)
            decls.append(tirx.DeclBuffer(p, data=v))
            info.append({"name": v.name, "dtype": dtype, "pointer": True, "shape": shape})
        else:
            dtype = dtype_str(p.ty) if isinstance(p.ty, PrimType) else None
            if dtype not in C_TYPES:
                raise PlainCError(f"{name}: parameter {p.name!r} of type {p.ty} is not supported")
            taken.add(p.name)
            new_params.append(p)
            info.append({"name": p.name, "dtype": dtype, "pointer": False, "shape": None})

    placed, ws_bytes = plan_workspace(func.body, workspace_align, name, fixed_plan(func))
    body = zero_locals(func.body, {buf for buf, _ in placed})
    workspace = None
    if placed:
        workspace = tvm.ir.Var(_c_identifier("workspace", taken), PointerType(PrimType("uint8")))
        offsets = {buf: off for buf, off in placed}

        def to_workspace(stmt: Any) -> Any:
            if stmt.buffer not in offsets:
                return stmt
            off = offsets[stmt.buffer]
            ptr = tirx.call_intrin("handle", "tirx.handle_add_byte_offset", workspace, tirx.IntImm("int32", off))
            return tirx.DeclBuffer(stmt.buffer, data=ptr)

        body = tvm_ffi.structural_map(body, (tirx.AllocBuffer, to_workspace))
        new_params.append(workspace)
        info.append({"name": workspace.name, "dtype": "uint8", "pointer": True, "shape": (ws_bytes,), "role": "workspace"})

    body = tirx.SeqStmt([*decls, body]) if decls else body
    written = _written_roots(body, ptr_params, workspace)
    params: list[CParam] = []
    k = 0
    for item in info:
        if item.get("role") == "workspace":
            role = "workspace"
        elif not item["pointer"]:
            role = "scalar"
        else:
            role = "output" if written is None or k in written else "input"
            k += 1
        params.append(CParam(item["name"], C_TYPES[item["dtype"]], item["pointer"], role, item["dtype"], item["shape"]))

    attrs = {k: v for k, v in func.attrs.items() if k not in ("tirx.is_entry_func", "global_symbol", "calling_conv")}
    attrs["global_symbol"] = name
    noalias = bool(attrs.get("tirx.noalias", False))
    aliased = None
    if ALIASED_PARAMS in attrs:  # the overlapping params and the workspace lose restrict, the others keep it
        aliased = frozenset([int(i) for i in attrs[ALIASED_PARAMS]] + [i for i, p in enumerate(params)
                                                                        if p.role == "workspace"])
    new_func = tirx.PrimFunc(new_params, body, ret_type=None, attrs=tvm.ir.make_node("ir.DictAttrs", **attrs))
    sums = tuple(tuple(int(v) for v in t) for t in attrs.get(SUM_TABLES_ATTR, ()))
    return new_func, CFunction(name, tuple(params), ws_bytes, noalias, aliased, stack_scratch_bytes(func.body), sums)


def _compact_strides(shape: tuple[int, ...]) -> list[int]:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= s
    return list(reversed(strides))


def lower_plain(
    funcs: Mapping[str, tirx.PrimFunc],
    target: dict[str, Any] | str | tvm.target.Target,
    workspace_align: int = 16,
) -> tuple[tvm.IRModule, dict[str, CFunction]]:
    """Lower PrimFuncs to plain-signature TIR for ``target`` (steps 1-4 of the module docstring)."""
    if workspace_align <= 0 or workspace_align & (workspace_align - 1):
        raise ValueError(f"workspace_align must be a power of two, got {workspace_align}")
    out: dict[str, tirx.PrimFunc] = {}
    infos: dict[str, CFunction] = {}
    for gv, f in lower_tir(funcs, tvm.target.Target(target)):
        name = gv.name_hint
        if name not in funcs:
            raise PlainCError(f"lowering produced an extra function {name!r} (device split?)")
        out[name], infos[name] = _to_plain(name, f, workspace_align)
    mod = tvm.transform.Sequential(finalize_passes())(tvm.IRModule(out))
    return mod, {n: infos[n] for n in funcs}


# ---------------------------------------------------------------- C text


_MARK = "TVMPATCHFLT"


def _printed_exactly(value: float, bits: int) -> bool:
    """Does TVM's '%.6e' printing give back the same value (after rounding to the constant's type)?"""
    if not math.isfinite(value):
        return False
    text = f"{value:.6e}"
    if bits == 32:
        return to_f32(float(text)) == to_f32(value)
    return float(text) == value


def _mark_float_constants(mod: tvm.IRModule) -> tuple[tvm.IRModule, dict[str, str]]:
    """Replace float constants the C backend would print inexactly by ``TVMPATCHFLTn()`` markers."""
    literals: dict[str, str] = {}

    def on_float(imm: Any) -> Any:
        dtype = str(imm.ty.dtype) if hasattr(imm.ty, "dtype") else str(imm.dtype)
        bits = 32 if dtype == "float32" else 64 if dtype == "float64" else 0
        if bits == 0:
            raise PlainCError(f"float constant of dtype {dtype} is not supported in plain C")
        value = float(imm.value)
        if _printed_exactly(value, bits):
            return imm
        marker = f"{_MARK}{len(literals)}"
        literals[marker] = c_float_literal(value, bits)
        return tirx.call_pure_extern(dtype, marker)

    funcs = {gv.name_hint: tvm_ffi.structural_map(f, (tirx.FloatImm, on_float)) for gv, f in mod.functions.items()}
    return tvm.IRModule(funcs), literals


_PREAMBLE = re.compile(
    r"^(// tvm target:.*|#define TVM_EXPORTS|#include .*|void\* __tvm_ffi__library_ctx = NULL;"
    r"|#ifdef __cplusplus|extern \"C\"|#endif|)$"
)


def _split_functions(src: str, names: list[str]) -> dict[str, tuple[str, str]]:
    """name -> (TVM's parameter list text, body text) of each definition; fail on anything unknown."""
    found: dict[str, tuple[str, str]] = {}
    rest = src
    for name in names:
        m = re.search(r"^TVM_DLL void " + re.escape(name) + r"\((.*)\) \{\n", rest, flags=re.M)
        if m is None:
            raise PlainCError(f"no definition of {name!r} in the C backend's output")
        end = rest.find("\n}\n", m.end() - 1)
        if end < 0:
            raise PlainCError(f"unterminated definition of {name!r} in the C backend's output")
        found[name] = (m.group(1), rest[m.end() : end + 1])
        rest = rest[: m.start()] + rest[end + 3 :]
    leftovers = []
    for line in rest.splitlines():
        if _PREAMBLE.match(line):
            continue
        if re.match(r"^TVM_DLL \w[\w\s\*]*\b\w+\(.*\);$", line):  # forward declarations
            continue
        leftovers.append(line)
    if leftovers:
        raise PlainCError("the C backend emitted file-scope code this exporter does not handle: " + " | ".join(leftovers[:5]))
    return found


def _check_body(name: str, body: str) -> None:
    m = re.search(r"\b(TVM\w*|tvm(?!p_)\w*|__tvm\w*|DLTensor|TVMFFIAny)\b", body)
    if m:
        raise PlainCError(f"{name}: the C code still calls the TVM runtime ({m.group(1)})")
    if re.search(r"\b(half|float\d+|u?int\d+_t\d+|u?int\d+x\d+)\b", body):
        raise PlainCError(f"{name}: the C code uses a vector or half type plain C lacks")


# GCC's loop unroller on one kernel (a tuning choice, tune/space.py): a function attribute, so the rest of the
# translation unit keeps the project's flags; other compilers ignore it.
UNROLL_MACRO = "TVMP_UNROLL_LOOPS"
_UNROLL_DEFINE = (f"#if defined(__GNUC__) && !defined(__clang__)\n#define {UNROLL_MACRO} "
                  f"__attribute__((optimize(\"unroll-loops\")))\n#else\n#define {UNROLL_MACRO}\n#endif\n")


# A function GCC must not inline (a patch stage's outlined nests and the stage itself: codegen/outline.py).
NOINLINE_MACRO = "TVMP_NOINLINE"
_NOINLINE_DEFINE = (f"#if defined(__GNUC__)\n#define {NOINLINE_MACRO} __attribute__((noinline))\n#else\n"
                    f"#define {NOINLINE_MACRO}\n#endif\n")


def emit_c(funcs: Mapping[str, tirx.PrimFunc], workspace_align: int = 16,
           unrolled: Iterable[str] = (), outlined: Mapping[str, Iterable[int]] | None = None,
           peeled: Iterable[str] = ()) -> CSource:
    """Plain C99 for each PrimFunc: definitions with pointer parameters and a workspace pointer.

    Keys of ``funcs`` become the C function names. A PrimFunc with the attribute ``tirx.noalias``
    False (for kernels the driver runs in place) gets no ``restrict``. The kernels named in ``unrolled`` are
    compiled with GCC's ``-funroll-loops`` (``TVMP_UNROLL_LOOPS``: a tuning database's choice per kernel).
    ``outlined``: patch stage -> its layer nests (codegen/outline.py) moved into ``static`` ``noinline``
    functions; such a stage is itself ``noinline`` (inlined into the network's function it would lose what the
    outlining gains: measured, docs/kernels.md). The patch stages named in ``peeled`` have their patch loops
    peeled (codegen/peel_patches.py), after the outlining. All are tuning choices per kernel.
    """
    unrolled, peeled = set(unrolled), set(peeled)
    outlined = {n: sorted(set(v)) for n, v in (outlined or {}).items() if v}
    unknown = (unrolled | set(outlined) | peeled) - set(funcs)
    if unknown:
        raise PlainCError(f"unrolled, outlined or peeled kernels {sorted(unknown)} are not among the kernels emitted")
    for name in funcs:
        if not re.fullmatch(r"[A-Za-z_]\w*", name) or name in _C_KEYWORDS:
            raise PlainCError(f"{name!r} is not a usable C function name")
    mod, infos = lower_plain(funcs, C_TARGET, workspace_align)
    mod, helpers, owner = _outlined(mod, infos, outlined)  # owner: outlined nest -> its stage (compiled alike)
    if peeled:
        mod = tvm.IRModule({gv: peel_patches(f) if gv.name_hint in peeled else f for gv, f in mod.functions.items()})
    mod, literals = _mark_float_constants(mod)
    src = tvm.get_global_func("target.build.c")(mod, tvm.target.Target(C_TARGET)).inspect_source()
    bodies = _split_functions(src, [*helpers, *funcs])
    parts = []
    for name, (tvm_params, body) in bodies.items():
        info = helpers.get(name) or infos[name]
        tvm_names = [re.split(r"[\s\*]+", p.strip())[-1] for p in tvm_params.split(",") if p.strip()]
        if tvm_names != [p.name for p in info.params]:
            raise PlainCError(f"{name}: the C backend renamed parameters {tvm_names}, expected {[p.name for p in info.params]}")
        for marker, literal in literals.items():
            body = re.sub(re.escape(marker) + r"\(\)", literal, body)
        if _MARK in body:
            raise PlainCError(f"{name}: a float constant marker was not replaced")
        _check_body(name, body)
        prefix = ("static " if name in helpers else "") + "".join(
            m + " " for m, on in ((UNROLL_MACRO, owner.get(name, name) in unrolled),
                                  (NOINLINE_MACRO, name in helpers or name in outlined)) if on)
        parts.append(f"{prefix}{info.prototype} {{\n{body}}}\n")
    code = "\n".join(parts)
    includes = ["#include <stdint.h>"]
    if re.search(r"\bbool\b", code):
        includes.append("#include <stdbool.h>")
    if any(re.search(r"\b" + f + r"\b", code) for f in _MATH_FUNCS):
        includes.append("#include <math.h>")
    header = "/* Generated by tvm_patch.codegen: plain C99 kernels, no TVM runtime. */\n" + "\n".join(includes) + "\n\n"
    if re.search(MICRO_KERNEL_CALL, code):
        header += MICRO_KERNELS.read_text() + "\n"
    if unrolled:
        header += _UNROLL_DEFINE + "\n"
    if outlined:
        header += _NOINLINE_DEFINE + "\n"
    return CSource(header + code, dict(infos), workspace_align)


def _outlined(mod: tvm.IRModule, infos: dict[str, CFunction], outlined: Mapping[str, list[int]]
              ) -> tuple[tvm.IRModule, dict[str, CFunction], dict[str, str]]:
    """``mod`` with the chosen nests of each stage in ``outlined`` moved into functions of their own (first in the
    module, so each is defined before its stage calls it), those functions' C interfaces and their stages."""
    if not outlined:
        return mod, {}, {}
    funcs = {gv.name_hint: f for gv, f in mod.functions.items()}
    helpers: dict[str, tirx.PrimFunc] = {}
    cinfos: dict[str, CFunction] = {}
    owner: dict[str, str] = {}
    for name, nests in outlined.items():
        funcs[name], made = outline_nests(name, funcs[name], nests)
        stage = infos[name]
        by_name = {p.name: (i, p) for i, p in enumerate(stage.params)}
        for fname, f in made.items():
            params, aliased = [], []
            for v in f.params:
                if v.name in by_name and isinstance(v.ty, PointerType):
                    i, p = by_name[v.name]
                    if stage.aliased is not None and i in stage.aliased:
                        aliased.append(len(params))
                    params.append(p)
                else:
                    params.append(CParam(v.name, C_TYPES[dtype_str(v.ty)], False, "scalar", dtype_str(v.ty)))
            helpers[fname], owner[fname] = f, name
            cinfos[fname] = CFunction(fname, tuple(params), 0, stage.noalias,
                                      frozenset(aliased) if stage.aliased is not None else None)
    return tvm.IRModule({**helpers, **funcs}), cinfos, owner


# ---------------------------------------------------------------- objects


def emit_object(
    funcs: Mapping[str, tirx.PrimFunc],
    target_json: dict[str, Any] | None = None,
    workspace_align: int = 16,
) -> tuple[bytes, dict[str, CFunction]]:
    """An ELF object (through TVM's LLVM backend) with the same plain signatures as :func:`emit_c`.

    ``target_json`` defaults to :data:`ARM_TARGET` (Cortex-M7, hard float); without an "opt-level" it
    gets 2. Returns the object bytes and each function's interface. The object may still reference
    ``memset``/``memcpy`` for some kernels (newlib provides them); :func:`undefined_symbols` tells.
    """
    spec = dict(target_json or ARM_TARGET)
    # LLVM's default O3 fully unrolls small loops and merges the zero stores of padding into memset
    # calls (an undefined symbol in the object); O2, firmware's usual level, keeps them inline.
    spec.setdefault("opt-level", 2)
    tgt = tvm.target.Target(spec)
    if tgt.kind.name != "llvm":
        raise ValueError(f"emit_object needs an llvm target, got {tgt.kind.name!r}")
    mod, infos = lower_plain(funcs, tgt, workspace_align)
    built = tvm.get_global_func("target.build.llvm")(mod, tgt)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernels.o"
        built.write_to_file(str(path), "o")
        data = path.read_bytes()
    return data, infos


def undefined_symbols(obj: bytes, nm: str = "arm-none-eabi-nm") -> list[str]:
    """Undefined symbols of an object file, via ``nm`` (for checks that the object is self-contained)."""
    with tempfile.NamedTemporaryFile(suffix=".o") as f:
        f.write(obj)
        f.flush()
        out = subprocess.run([nm, "-u", f.name], check=True, capture_output=True, text=True).stdout
    return [line.split()[-1] for line in out.splitlines() if line.strip()]
