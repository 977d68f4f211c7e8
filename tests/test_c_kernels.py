"""Plain C kernels out of TIR: compiled with gcc, called through ctypes, compared with tvm.compile."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import te, topi

from tvm_patch.codegen import ARM_TARGET, CFunction, CSource, PlainCError, emit_c, emit_object, undefined_symbols
from tvm_patch.codegen.c_kernels import MICRO_KERNELS, UNROLL_MACRO, mark_in_place

FLT_MAX = float(np.finfo(np.float32).max)
ARM_GCC = shutil.which("arm-none-eabi-gcc")
ARM_NM = shutil.which("arm-none-eabi-nm")
ARM_READELF = shutil.which("arm-none-eabi-readelf")
ARM_FLAGS = ["-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16", "-O2", "-c", "-Wall", "-Werror"]
HOST_FLAGS = ["-O2", "-Wall", "-Werror", "-std=c99", "-shared", "-fPIC"]


# ---------------------------------------------------------------- kernels under test


def _requant(acc: te.Tensor, multiplier: int, shift: int, zero_point: int, name: str) -> te.Tensor:
    q = topi.fixed_point_multiply(acc, multiplier, shift)
    return te.compute(
        q.shape, lambda *i: te.max(te.min(q(*i) + zero_point, 127), -128).astype("int8"), name=name
    )


def conv2d_bias_relu_f32() -> tvm.tirx.PrimFunc:
    a = te.placeholder((1, 10, 10, 6), "float32", name="A")
    w = te.placeholder((3, 3, 6, 8), "float32", name="W")
    b = te.placeholder((8,), "float32", name="bias")
    conv = topi.nn.conv2d_nhwc(a, w, 1, 1, 1)
    biased = te.compute(conv.shape, lambda n, h, x, c: conv[n, h, x, c] + b[c], name="biased")
    return te.create_prim_func([a, w, b, topi.nn.relu(biased)])


def conv2d_int8_requant(shift: int) -> Callable[[], tvm.tirx.PrimFunc]:
    def build() -> tvm.tirx.PrimFunc:
        a = te.placeholder((1, 9, 9, 8), "int8", name="A")
        w = te.placeholder((3, 3, 8, 16), "int8", name="W")
        b = te.placeholder((16,), "int32", name="bias")
        acc = topi.nn.conv2d_nhwc(a, w, 2, 1, 1, out_dtype="int32")
        biased = te.compute(acc.shape, lambda n, h, x, c: acc[n, h, x, c] + b[c], name="biased")
        return te.create_prim_func([a, w, b, _requant(biased, 1518500250, shift, -3, "out")])

    return build


def depthwise_int8() -> tvm.tirx.PrimFunc:
    a = te.placeholder((1, 12, 12, 16), "int8", name="A")
    w = te.placeholder((3, 3, 16, 1), "int8", name="W")
    acc = topi.nn.depthwise_conv2d_nhwc(a, w, 1, 1, 1, out_dtype="int32")
    return te.create_prim_func([a, w, _requant(acc, 1789569707, -8, 5, "out")])


def depthwise_f32_stride2() -> tvm.tirx.PrimFunc:
    a = te.placeholder((1, 11, 11, 8), "float32", name="A")
    w = te.placeholder((3, 3, 8, 1), "float32", name="W")
    return te.create_prim_func([a, w, topi.nn.depthwise_conv2d_nhwc(a, w, 2, 1, 1)])


def two_stage_compute_at() -> tvm.tirx.PrimFunc:
    """A pointwise stage computed under the row tiles of a 3-tap diagonal stencil: the intermediate
    buffer shrinks to one tile plus halo and lives in the workspace."""
    a = te.placeholder((1, 16, 16, 4), "float32", name="A")
    mid = te.compute(a.shape, lambda n, h, x, c: a[n, h, x, c] * (1.0 / 3.0) + 1.0, name="mid")
    out = te.compute(
        (1, 14, 14, 4),
        lambda n, h, x, c: mid[n, h, x, c] + mid[n, h + 1, x + 1, c] + mid[n, h + 2, x + 2, c],
        name="out",
    )
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, out]))
    _, h, _, _ = sch.get_loops(sch.get_sblock("out"))
    h_outer, _ = sch.split(h, [7, 2])
    sch.compute_at(sch.get_sblock("mid"), h_outer)
    return sch.mod["main"]


def patch_two_convs_int8() -> tvm.tirx.PrimFunc:
    """MCUNetV2-style patch stage: conv3x3 -> requant/ReLU -> conv3x3 stride 2, the output split in 2x2
    patches, every producer (padding included) computed per patch under the patch loops."""
    a = te.placeholder((1, 16, 16, 4), "int8", name="A")
    w1 = te.placeholder((3, 3, 4, 8), "int8", name="W1")
    w2 = te.placeholder((3, 3, 8, 8), "int8", name="W2")
    acc1 = topi.nn.conv2d_nhwc(a, w1, 1, 1, 1, out_dtype="int32")
    q = topi.fixed_point_multiply(acc1, 1518500250, -9)
    act = te.compute(q.shape, lambda *i: te.max(te.min(q(*i), 127), 0).astype("int8"), name="act")
    acc2 = topi.nn.conv2d_nhwc(act, w2, 2, 1, 1, out_dtype="int32")
    func = te.create_prim_func([a, w1, w2, _requant(acc2, 1073741824, -6, 0, "out")])
    sch = tvm.s_tir.Schedule(func)
    n, h, w, c = sch.get_loops(sch.get_sblock("out"))
    h_o, h_i = sch.split(h, [2, 4])
    w_o, w_i = sch.split(w, [2, 4])
    sch.reorder(n, h_o, w_o, c, h_i, w_i)
    # consumers first: requant of conv 2, conv 2, its padding, ReLU, requant of conv 1, conv 1, padding
    for producer in ["compute_1", "conv2d_nhwc_1", "pad_temp_1", "act", "compute", "conv2d_nhwc", "pad_temp"]:
        sch.compute_at(sch.get_sblock(producer), w_o)
    return sch.mod["main"]


def maxpool_f32() -> tvm.tirx.PrimFunc:
    """Max pooling with padding: its init and pad value is -FLT_MAX, which %.6e cannot print exactly."""
    a = te.placeholder((1, 9, 9, 4), "float32", name="A")
    return te.create_prim_func([a, topi.nn.pool2d(a, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), "max", layout="NHWC")])


KERNELS: dict[str, Callable[[], tvm.tirx.PrimFunc]] = {
    "conv_relu_f32": conv2d_bias_relu_f32,
    "conv_q8_rshift": conv2d_int8_requant(-11),
    "conv_q8_lshift": conv2d_int8_requant(1),
    "dw_q8": depthwise_int8,
    "dw_f32_s2": depthwise_f32_stride2,
    "two_stage": two_stage_compute_at,
    "patch_q8": patch_two_convs_int8,
    "maxpool_f32": maxpool_f32,
}


# ---------------------------------------------------------------- helpers


def _random_inputs(func: tvm.tirx.PrimFunc, rng: np.random.Generator) -> list[np.ndarray]:
    """Random arrays for every parameter; the last one (the output) is filled with garbage."""
    arrays = []
    for p in func.params:
        shape = tuple(int(s) for s in p.shape)
        dtype = str(p.dtype)
        if dtype == "int8":
            arrays.append(rng.integers(-128, 128, size=shape, dtype=np.int8))
        elif dtype == "int32":
            arrays.append(rng.integers(-(2**14), 2**14, size=shape, dtype=np.int32))
        else:
            arrays.append(rng.standard_normal(size=shape).astype(dtype))
    arrays[-1] = np.full_like(arrays[-1], 77)
    return arrays


def _reference(func: tvm.tirx.PrimFunc, arrays: list[np.ndarray]) -> np.ndarray:
    ex = tvm.compile(func, target={"kind": "llvm"})
    tensors = [tvm.runtime.tensor(a) for a in arrays]
    ex(*tensors)
    return tensors[-1].numpy()


def _aligned_garbage(nbytes: int, align: int, rng: np.random.Generator) -> np.ndarray:
    raw = rng.integers(0, 256, size=nbytes + align, dtype=np.uint8)
    start = (-raw.ctypes.data) % align
    view = raw[start : start + nbytes]
    assert view.ctypes.data % align == 0
    return view


def _call(lib: ctypes.CDLL, cf: CFunction, arrays: list[np.ndarray], align: int, rng: np.random.Generator) -> np.ndarray:
    arrays = [a.copy() for a in arrays]
    args, keep = [], []
    data = iter(arrays)
    for p in cf.params:
        if p.role == "workspace":
            ws = _aligned_garbage(cf.workspace_bytes, align, rng)
            keep.append(ws)
            args.append(ctypes.c_void_p(ws.ctypes.data))
        else:
            args.append(ctypes.c_void_p(next(data).ctypes.data))
    fn = getattr(lib, cf.name)
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p] * len(args)
    fn(*args)
    return arrays[-1]


def _compile_host(code: str, tmp: Path, name: str) -> ctypes.CDLL:
    c = tmp / f"{name}.c"
    c.write_text(code)
    so = tmp / f"{name}.so"
    subprocess.run(["gcc", *HOST_FLAGS, str(c), "-o", str(so), "-lm"], check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(so))


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def prim_funcs() -> dict[str, tvm.tirx.PrimFunc]:
    return {name: build() for name, build in KERNELS.items()}


@pytest.fixture(scope="module")
def csource(prim_funcs) -> CSource:
    return emit_c(prim_funcs)


@pytest.fixture(scope="module")
def host_lib(csource, tmp_path_factory) -> ctypes.CDLL:
    return _compile_host(csource.code, tmp_path_factory.mktemp("host"), "kernels")


@pytest.fixture(scope="module")
def references(prim_funcs) -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
    out = {}
    for k, (name, func) in enumerate(prim_funcs.items()):
        arrays = _random_inputs(func, np.random.default_rng(1000 + k))
        out[name] = (arrays, _reference(func, arrays))
    return out


# ---------------------------------------------------------------- tests


def test_source_is_plain_c(csource):
    """No TVM runtime: the kernels' code, the micro-kernel header (tvmp_kernels.h, its own test) set aside,
    names nothing of TVM's but the project's own tvmp_ micro-kernels."""
    code = re.sub(r"/\*.*?\*/", "", csource.code.replace(MICRO_KERNELS.read_text(), ""), flags=re.S)
    assert "tvm" not in re.sub(r"\btvmp_\w+", "", code).lower() and "TVMFFI" not in code and "DLTensor" not in code
    includes = re.findall(r"#include\s*(\S+)", code)
    assert set(includes) <= {"<stdint.h>", "<math.h>", "<stdbool.h>"}, includes
    assert "q_multiply_shift" not in code
    assert 'extern "C"' not in code
    for name, cf in csource.functions.items():
        assert code.count(cf.prototype + " {") == 1, name
    assert "\n#include <stdint.h>\n" in csource.code


def test_signatures(csource, prim_funcs):
    conv = csource.functions["conv_q8_rshift"]
    assert [(p.name, p.role, p.c_type) for p in conv.params[:4]] == [
        ("A", "input", "int8_t"),
        ("W", "input", "int8_t"),
        ("bias", "input", "int32_t"),
        ("out", "output", "int8_t"),
    ]
    assert conv.prototype.startswith("void conv_q8_rshift(const int8_t *restrict A, const int8_t *restrict W, ")
    for name, cf in csource.functions.items():
        func = prim_funcs[name]
        data_params = [p for p in cf.params if p.role != "workspace"]
        assert [p.shape for p in data_params] == [tuple(int(s) for s in b.shape) for b in func.params]
        has_ws = any(p.role == "workspace" for p in cf.params)
        assert has_ws == (cf.workspace_bytes > 0)
        assert cf.workspace_bytes % csource.workspace_align == 0


def test_intermediate_buffer_lives_in_the_workspace(csource):
    cf = csource.functions["two_stage"]
    # Each 2-row tile of the output reads rows h..h+3 of `mid`: 4 rows x 16 x 4 float32, not 16 rows.
    assert cf.workspace_bytes == 4 * 16 * 4 * 4
    assert cf.params[-1].role == "workspace"
    assert re.search(r"float\* mid = \(\(float\*\)\(\(void\*\)\(\(char\*\)workspace \+ 0\)\)\);", csource.code)


@pytest.mark.parametrize("name", list(KERNELS))
def test_host_gcc_matches_tvm_llvm(name, csource, host_lib, references):
    arrays, expected = references[name]
    got = _call(host_lib, csource.functions[name], arrays, csource.workspace_align, np.random.default_rng(7))
    assert got.dtype == expected.dtype
    # Same loop nest, same operation order, no FMA contraction (-std=c99, generic x86-64 for both):
    # float32 results are expected to be identical, not just close.
    np.testing.assert_array_equal(got, expected)
    assert np.any(got != 77)


def test_float_constants_survive_printing(csource):
    # 1/3 and -FLT_MAX print inexactly with %.6e; they must appear as exact hexadecimal literals.
    assert np.float32(float("3.333333e-01")) != np.float32(1.0 / 3.0)
    assert np.float32(1.0 / 3.0).item().hex() + "f" in csource.code
    assert np.float32(-FLT_MAX).item().hex() + "f" in csource.code


def test_workspace_is_not_assumed_zero(csource, host_lib, references):
    arrays, expected = references["two_stage"]
    cf = csource.functions["two_stage"]
    for seed in range(3):
        got = _call(host_lib, cf, arrays, csource.workspace_align, np.random.default_rng(seed))
        np.testing.assert_array_equal(got, expected)


def test_noalias_false_drops_restrict(prim_funcs):
    src = emit_c({"dw_inplace": prim_funcs["dw_q8"].with_attr("tirx.noalias", False)})
    assert "restrict" not in src.code.replace(MICRO_KERNELS.read_text(), "")  # the kernel, not the header's prose
    assert src.functions["dw_inplace"].prototype.startswith("void dw_inplace(const int8_t *A, ")


def test_in_place_keeps_restrict_on_the_other_params(prim_funcs):
    """mark_in_place: only the overlapping (input, output) params lose restrict; constants keep theirs."""
    func = prim_funcs["dw_q8"]
    last = len(func.params) - 1
    cf = emit_c({"dw": mark_in_place(func, [(0, last)])}).functions["dw"]
    decls = cf.prototype.split("(", 1)[1].split(", ")
    assert "restrict" not in decls[0] and "restrict" not in decls[last]
    assert all("restrict" in d for d in decls[1:last])


def test_unrolled_kernels_carry_the_unroller_and_compute_the_same(prim_funcs, references, tmp_path):
    """A kernel named in ``unrolled`` opens with GCC's unroller attribute (the others do not), compiles warning-free
    and computes what TVM computes; a name that is not a kernel is refused."""
    name = "dw_q8"
    src = emit_c(prim_funcs, unrolled=[name])
    defs = [ln for ln in src.code.splitlines() if ln.startswith(UNROLL_MACRO + " void ")]
    assert [d.split("(")[0] for d in defs] == [f"{UNROLL_MACRO} void {name}"]
    assert 'optimize("unroll-loops")' in src.code and UNROLL_MACRO not in emit_c(prim_funcs).code
    lib = _compile_host(src.code, tmp_path, "unrolled")
    arrays, expected = references[name]
    got = _call(lib, src.functions[name], arrays, src.workspace_align, np.random.default_rng(0))
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(PlainCError, match="not among the kernels"):
        emit_c(prim_funcs, unrolled=["nope"])


def test_rejects_symbolic_shapes():
    n = te.var("n")
    a = te.placeholder((n,), "float32", name="A")
    b = te.compute((n,), lambda i: a[i] * 2.0, name="B")
    c = te.compute((n,), lambda i: b[i] + 1.0, name="C")
    with pytest.raises(PlainCError, match="non-constant shape"):
        emit_c({"dyn": te.create_prim_func([a, c])})


def test_llvm_object_for_host_matches(prim_funcs, references, tmp_path):
    """The same plain signatures through TVM's LLVM backend (host triple), linked and called."""
    obj, infos = emit_object(prim_funcs, {"kind": "llvm"})
    (tmp_path / "k.o").write_bytes(obj)
    subprocess.run(["gcc", "-shared", str(tmp_path / "k.o"), "-o", str(tmp_path / "k.so")], check=True)
    lib = ctypes.CDLL(str(tmp_path / "k.so"))
    for name, cf in infos.items():
        arrays, expected = references[name]
        got = _call(lib, cf, arrays, 16, np.random.default_rng(3))
        np.testing.assert_array_equal(got, expected, err_msg=name)


@pytest.mark.skipif(ARM_GCC is None, reason="arm-none-eabi-gcc is not installed (apt: gcc-arm-none-eabi)")
def test_arm_gcc_compiles_the_same_c(csource, tmp_path):
    c = tmp_path / "kernels.c"
    c.write_text(csource.code)
    o = tmp_path / "kernels.o"
    r = subprocess.run([ARM_GCC, *ARM_FLAGS, str(c), "-o", str(o)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    syms = subprocess.run([ARM_NM, str(o)], check=True, capture_output=True, text=True).stdout
    for name in csource.functions:
        assert re.search(rf"\bT {name}$", syms, flags=re.M), name


@pytest.mark.skipif(ARM_NM is None or ARM_READELF is None, reason="binutils-arm-none-eabi is not installed")
def test_arm_object_has_no_undefined_symbols(prim_funcs, tmp_path):
    obj, infos = emit_object(prim_funcs, ARM_TARGET)
    assert undefined_symbols(obj) == []
    assert set(infos) == set(prim_funcs)
    path = tmp_path / "kernels.o"
    path.write_bytes(obj)
    attrs = subprocess.run([ARM_READELF, "-h", "-A", str(path)], check=True, capture_output=True, text=True).stdout
    assert re.search(r"Machine:\s+ARM", attrs)
    assert 'Tag_CPU_name: "cortex-m7"' in attrs
    assert "Tag_ABI_VFP_args: VFP registers" in attrs  # hard-float calling convention
    syms = subprocess.run([ARM_NM, str(path)], check=True, capture_output=True, text=True).stdout
    for name in prim_funcs:
        assert re.search(rf"\bT {name}$", syms, flags=re.M), name


@pytest.mark.skipif(ARM_GCC is None, reason="arm-none-eabi-gcc is not installed (apt: gcc-arm-none-eabi)")
def test_arm_object_links_with_a_hard_float_driver(prim_funcs, csource, tmp_path):
    """A gcc-built caller using CSource.header() links against the LLVM object (the linker rejects
    mixing hard- and soft-float calling conventions, so this also checks the ABI)."""
    obj, infos = emit_object(prim_funcs, ARM_TARGET)
    (tmp_path / "kernels.o").write_bytes(obj)
    (tmp_path / "kernels.h").write_text(csource.header())
    calls, arrays = [], []
    for name, cf in infos.items():
        args = []
        for i, p in enumerate(cf.params):
            n = 1
            for d in p.shape:
                n *= d
            arrays.append(f"static {p.c_type} {name}_{i}[{n}] __attribute__((aligned(16)));")
            args.append(f"{name}_{i}")
        calls.append(f"  {name}({', '.join(args)});")
    (tmp_path / "main.c").write_text(
        '#include "kernels.h"\n' + "\n".join(arrays) + "\nint main(void) {\n" + "\n".join(calls) + "\n  return 0;\n}\n"
    )
    r = subprocess.run(
        [ARM_GCC, *[f for f in ARM_FLAGS if f != "-c"], "-std=c99", "--specs=nosys.specs", "-I", str(tmp_path),
         str(tmp_path / "main.c"), str(tmp_path / "kernels.o"), "-o", str(tmp_path / "fw.elf")],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "fw.elf").stat().st_size > 0
