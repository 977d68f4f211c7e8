"""int8 patch stages: PatchStage on modules lowered by LowerToInteger equals the unpatched module bit for bit.

The network's final output alone can hide a wrong stage (a softmax over 2 classes saturates), so the modules
compared here also return the stage outputs: the lowered module is rebuilt to return (final output, the
output of every tested split), compiled once per model as the reference; for each (split, patches) the
module returning (final output, outputs of that split and deeper ones) is patched, compiled and compared.
Every compared tensor must be equal, element for element. The zoo models are compared on their first
layers in the default run (the module cut after the deepest tested split); the whole networks, every zoo
model at three splits, and `verify_patch` itself on every combination, are the slow tests.

Splits count layers as `tvm-patch profile` numbers the model as imported: the lowered graph numbers its
layers the same way (a zero-point pad is part of its convolution, `tvm_patch.graph`), which is asserted here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tflite
import tvm
from tvm import relax

from relay_passes import PatchStage
from relay_passes import QPARAMS_ATTR, float_ops_remaining, lower_to_integer, quant_params
from tvm_patch import quant as Q
from tvm_patch import zoo
from tvm_patch.errors import TvmPatchError
from tvm_patch.frontend import load
from tvm_patch.graph import build_graph
from tvm_patch.patch import Add, Conv
from tvm_patch.patch.from_graph import stage_from_graph
from tvm_patch.patch.memory import best_split
from tvm_patch.split import check_split, resolve_split, valid_splits
from tvm_patch.verify import compile_vm, run_vm, seeded_inputs, verify_patch

N_INPUTS = 3
FIXTURES = Path(__file__).parent / "fixtures" / "tflite"
# layer counts as `tvm-patch profile` numbers the .tflite files (the same in the lowered graph):
# vww: stem (s2, pad 0,0,1,1) + dw/pw; + the first stride-2 depthwise block; 2 blocks more.
# resnet8: stem; + the first residual block; + the stride-2 block (1x1 s2 shortcut, 3x3 s2 with pad 0,0,1,1).
# kws: the 10x4 stride-2 stem (pad 4,1,5,1); + 2 depthwise-separable blocks; 2 more.
MLPERF_SPLITS = {"vww_96_int8": (3, 5, 9), "resnet8_int8": (1, 4, 8), "kws_int8": (1, 5, 9)}
MLPERF_PATCHES = (2, 3)
# mcunet-in0: stem + dw + pw (+ expansion); through the first two residual adds.
# mbv2-w0.35-r144: stem block + expansion; through the first residual add; through the next two.
ZOO_SPLITS = {"mcunet-in0": (4, 10, 14), "mbv2-w0.35-r144": (4, 10, 17)}
ZOO_PATCHES = (2, 3, 4)


# -- helpers ----------------------------------------------------------------------------------------------


@relax.expr_functor.mutator
class _Expose(relax.PyExprMutator):
    """Re-emit `main`, making the given dataflow vars outputs of the dataflow block."""

    def __init__(self, mod: tvm.IRModule, keep: list) -> None:
        super().__init__(mod)
        self.keep = keep
        self.new: dict = {}

    def visit_var_binding_(self, binding) -> None:
        hit = [k for k in self.keep if k.same_as(binding.var)]
        if hit and isinstance(binding.var, relax.DataflowVar):
            new = self.builder_.emit_output(self.visit_expr(binding.value), name_hint=binding.var.name)
            self.set_var_remap(binding.var, new)
            self.new[hit[0]] = new
        else:
            super().visit_var_binding_(binding)
            if hit:
                self.new[hit[0]] = binding.var


def expose(mod: tvm.IRModule, out_vars: list, keep_final: bool) -> tvm.IRModule:
    """`mod` whose main returns (its output if keep_final, *out_vars); what is not needed is removed."""
    m = _Expose(mod, list(out_vars))
    f = m.visit_expr(mod["main"])
    fields = ([f.body.body] if keep_final else []) + [m.new[v] for v in out_vars]
    ret = relax.Tuple(fields)
    func = relax.Function(f.params, relax.SeqExpr(f.body.blocks, ret), relax.TupleType([x.ty for x in fields]),
                          attrs=f.attrs)
    out = tvm.IRModule({gv: fn for gv, fn in mod.functions_items() if gv.name_hint != "main"}, attrs=mod.attrs)
    out["main"] = func
    return relax.transform.DeadCodeElimination()(relax.transform.Normalize()(out))


@dataclass
class Case:
    """A lowered model, its tested splits and the reference outputs (final if keep_final, stage outputs)."""

    name: str
    folded: tvm.IRModule
    graph: object
    splits: tuple[int, ...]
    out_vars: list
    keep_final: bool
    inputs: list
    expected: list


def make_case(spec: str, splits: tuple[int, ...], patches: int, keep_final: bool) -> Case:
    imported = load(spec).mod
    folded = relax.transform.FoldConstant()(lower_to_integer(imported))
    graph = build_graph(folded)
    # the splits name the same layers in the imported graph (what `tvm-patch profile` shows) and the lowered one
    first = build_graph(imported).layers[:max(splits)]  # (build_graph does not need folded weights)
    assert [(la.op, la.name) for la in first] == [(la.op, la.name) for la in graph.layers[:max(splits)]], spec
    for n in splits:
        assert check_split(graph, n, (patches, patches)) is None, (spec, n)
    out_vars = [graph.layers[n - 1].out_var for n in splits]
    ref = expose(folded, out_vars, keep_final)
    # exposing outputs must not change the layers (so split numbers mean the same layers)
    assert [(la.op, la.output) for la in build_graph(ref).layers] == \
        [(la.op, la.output) for la in graph.layers[:len(build_graph(ref).layers)]]
    vm = compile_vm(ref)
    inputs = seeded_inputs(ref["main"], N_INPUTS)
    expected = [run_vm(vm, args) for args in inputs]
    for k in range(len(splits)):  # the stage outputs are not degenerate
        assert len(np.unique(np.stack([e[int(keep_final) + k] for e in expected]))) > 8
    return Case(spec, folded, graph, splits, out_vars, keep_final, inputs, expected)


def check_patched(case: Case, n: int, p: int) -> None:
    """PatchStage(n, p x p) on the case's module: every output equal to the reference, no float op added."""
    k = case.splits.index(n)
    variant = expose(case.folded, case.out_vars[k:], case.keep_final)
    patched = PatchStage(n, (p, p))(variant)
    calls = [b.value for blk in patched["main"].body.blocks for b in blk.bindings
             if isinstance(b.value, relax.Call) and b.value.op.same_as(tvm.ir.Op.get("relax.call_tir"))]
    assert any(c.args[0].name_hint == "patch_stage" for c in calls), (case.name, n, p)
    assert patched["patch_stage"].params[0].ty.dtype == "int8"
    # the patch stage computes in integers only: the float ops left are the model's own (a float input)
    kinds = lambda mod: sorted(s.split(" = ")[1] for s in float_ops_remaining(mod))  # noqa: E731
    assert kinds(patched) == kinds(variant), (case.name, n, p)
    vm = compile_vm(patched)
    f = int(case.keep_final)
    for args, exp in zip(case.inputs, case.expected):
        got = run_vm(vm, args)
        want = exp[:f] + exp[f + k:]
        assert len(got) == len(want)
        for j, (g, w) in enumerate(zip(got, want)):
            assert g.dtype == w.dtype and (j < f or g.dtype == np.int8)  # the zoo's final output is dequantized
            assert np.array_equal(g, w), (case.name, n, p, j, int(np.sum(g != w)))  # exact, float ones too


# -- the MLPerf Tiny models: whole network and stage outputs, default run --------------------------------


@pytest.fixture(scope="module", params=sorted(MLPERF_SPLITS))
def mlperf_case(request, mlperf_paths):
    name = request.param
    return make_case(str(mlperf_paths[name]), MLPERF_SPLITS[name], max(MLPERF_PATCHES), keep_final=True)


def test_mlperf_patched_equals_unpatched(mlperf_case):
    """Default run: every split, the patch grids in turn (2x2, 3x3, 2x2); the slow test runs every pair."""
    for i, n in enumerate(mlperf_case.splits):
        check_patched(mlperf_case, n, MLPERF_PATCHES[i % len(MLPERF_PATCHES)])


@pytest.mark.slow
def test_mlperf_patched_equals_unpatched_every_grid(mlperf_case):
    for n in mlperf_case.splits:
        for p in MLPERF_PATCHES:
            check_patched(mlperf_case, n, p)


@pytest.mark.parametrize("name, split, p, lowered", [("kws_int8", 5, 3, True), ("resnet8_int8", 8, 2, True),
                                                     ("kws_int8", "block:3", 2, False)])
def test_verify_patch_lowered(mlperf_paths, name, split, p, lowered):
    """On a lowered module, or on the model as imported (verify_patch lowers it itself)."""
    mod = load(str(mlperf_paths[name])).mod
    r = verify_patch(lower_to_integer(mod) if lowered else mod, p, split)
    assert r.passed and r.max_abs_diff == 0 and r.dtype == "int8", r
    assert r.detail.startswith("bit-exact") and ("LowerToInteger" in r.detail) == (not lowered)


def test_mini_mcunet_explicit_pads():
    """A model's own PAD ops (before VALID convs, MCUNet style) fold into their convs like LowerToInteger's."""
    case = make_case(str(FIXTURES / "mini_mcunet.tflite"), (5, 8), 2, keep_final=True)
    for n in case.splits:
        check_patched(case, n, 2)


# -- zoo int8 QDQ models: the stage outputs, default run; whole networks, slow -----------------------------


@pytest.mark.parametrize("name", sorted(ZOO_SPLITS))
def test_zoo_stage_equals_unpatched(name):
    """Default run: each split with one patch count (mcunet-in0 small grids on shallow stages, mbv2 the
    other way round); the slow test below runs every split with every patch count on the whole network."""
    case = make_case(f"zoo:{name}:int8", ZOO_SPLITS[name], max(ZOO_PATCHES), keep_final=False)
    grids = ZOO_PATCHES if name.startswith("mcunet") else ZOO_PATCHES[::-1]
    for n, p in zip(case.splits, grids):
        check_patched(case, n, p)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO_SPLITS))
def test_zoo_patched_module_equals_unpatched(name):
    case = make_case(f"zoo:{name}:int8", ZOO_SPLITS[name], max(ZOO_PATCHES), keep_final=True)
    for n in case.splits:
        for p in ZOO_PATCHES:
            check_patched(case, n, p)


def three_splits(graph) -> tuple[int, ...]:
    """The first three block ends after the stem that are valid 4x4 splits (as tests/test_patch_zoo.py picks
    them for the float models), numbered as `tvm-patch profile` numbers the model."""
    ends = [n for n in valid_splits(graph, (max(ZOO_PATCHES),) * 2)
            if n >= 2 and (n == len(graph.layers) or graph.layers[n].block != graph.layers[n - 1].block)]
    return tuple(ends[:3])


# the default run: one more combination on the zoo families the two models above do not cover
# (ProxylessNAS; MnasNet, whose squeeze-excite blocks end the valid splits)
@pytest.mark.parametrize("name, p", [("proxyless-w0.25-r112", 3), ("mnasnet-a1-r224", 4)])
def test_zoo_family_stage_equals_unpatched(name, p):
    spec = f"zoo:{name}:int8"
    n = three_splits(build_graph(load(spec).mod))[-1]
    check_patched(make_case(spec, (n,), p, keep_final=False), n, p)


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.names())
def test_every_zoo_model_patched_equals_unpatched(name):
    """Every zoo model's int8 variant, 2x2 / 3x3 / 4x4 patches at its first three block ends (the splits
    read from the model as imported): the whole patched module equals the unpatched lowered one."""
    spec = f"zoo:{name}:int8"
    splits = three_splits(build_graph(load(spec).mod))
    assert len(splits) == 3, (name, splits)
    case = make_case(spec, splits, max(ZOO_PATCHES), keep_final=True)
    for n in splits:
        for p in ZOO_PATCHES:
            check_patched(case, n, p)


@pytest.mark.slow
@pytest.mark.parametrize("spec, splits, patches", [
    *[(f"mlperf:{name}", s, MLPERF_PATCHES) for name, s in sorted(MLPERF_SPLITS.items())],
    *[(f"zoo:{name}:int8", s, ZOO_PATCHES) for name, s in sorted(ZOO_SPLITS.items())],
])
def test_verify_patch_every_combination(mlperf_paths, spec, splits, patches):
    path = str(mlperf_paths[spec[len("mlperf:"):]]) if spec.startswith("mlperf:") else spec
    low = lower_to_integer(load(path).mod)
    for n in splits:
        for p in patches:
            r = verify_patch(low, p, n, n_inputs=2)
            assert r.passed and r.max_abs_diff == 0, (spec, n, p, r)


# -- the mapping, without compiling ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def vww(mlperf_paths):
    path = str(mlperf_paths["vww_96_int8"])
    folded = relax.transform.FoldConstant()(lower_to_integer(load(path).mod))
    return path, folded, build_graph(folded)


def _tflite_ops(path: str):
    buf = open(path, "rb").read()
    model = tflite.Model.GetRootAsModel(buf, 0)
    sg = model.Subgraphs(0)
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        yield max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), op, sg, model


def _tensor(sg, model, index):
    t = sg.Tensors(index)
    q = t.Quantization()
    data = model.Buffers(t.Buffer()).DataAsNumpy()
    return (None if isinstance(data, int) else data), q.ScaleAsNumpy(), q.ZeroPointAsNumpy()


def test_conv_quant_is_the_tflite_conv(vww):
    """The stage's ConvQuant and bias are the .tflite file's own: the input zero point, the bias before
    LowerToInteger folded -zp * sum(w) into it, and TFLite's per-channel multipliers and shifts."""
    path, folded, graph = vww
    stage, _ = stage_from_graph(graph, 5, folded["main"])
    convs = [la for la in stage.layers if isinstance(la, Conv)]
    assert len(convs) == 5 and len(stage.layers) == 5  # the zero-point pads are part of their convs
    assert [c.padding for c in convs] == [(0, 0, 1, 1), (1, 1, 1, 1), (0, 0, 0, 0), (0, 0, 1, 1), (0, 0, 0, 0)]
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1), (2, 2), (1, 1)]
    tfl_convs = [(op, sg, model) for code, op, sg, model in _tflite_ops(path)
                 if code in (tflite.BuiltinOperator.CONV_2D, tflite.BuiltinOperator.DEPTHWISE_CONV_2D)][:5]
    for conv, (op, sg, model) in zip(convs, tfl_convs):
        _, s_in, z_in = _tensor(sg, model, op.Inputs(0))
        _, s_w, _ = _tensor(sg, model, op.Inputs(1))
        bias, _, _ = _tensor(sg, model, op.Inputs(2))
        _, s_out, z_out = _tensor(sg, model, op.Outputs(0))
        q = conv.quant
        assert q.input_zero_point == int(z_in[0]) and q.output_zero_point == int(z_out[0])
        assert np.array_equal(conv.bias, bias.view(np.int32))
        m, s = Q.conv_multipliers(float(s_in[0]), s_w, float(s_out[0]))
        assert np.array_equal(q.multiplier, m) and np.array_equal(q.shift, s)
        opts = tflite.Conv2DOptions() if conv.groups == 1 else tflite.DepthwiseConv2DOptions()
        opts.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
        act = {tflite.ActivationFunctionType.NONE: (None, None), tflite.ActivationFunctionType.RELU: (0.0, None),
               tflite.ActivationFunctionType.RELU6: (0.0, 6.0)}[opts.FusedActivationFunction()]
        assert (q.act_min, q.act_max) == Q.activation_range(float(s_out[0]), int(z_out[0]), *act)
        assert q.weight_zero_point == 0


def test_residual_add_quant(mlperf_paths):
    folded = relax.transform.FoldConstant()(lower_to_integer(load(str(mlperf_paths["resnet8_int8"])).mod))
    graph = build_graph(folded)
    adds = [la for la in graph.layers if la.op == "add"]  # LowerToInteger's q_add is an add layer
    assert len(adds) == 3 and all(a.broadcast_free for a in adds)
    stage, _ = stage_from_graph(graph, 8, folded["main"])
    add = [la for la in stage.layers if isinstance(la, Add)]
    assert len(add) == 2
    qp = quant_params(folded["main"])
    rec = qp["q_add"]
    q = add[0].quant
    assert q.input_zero_points == (-rec["input1_offset"], -rec["input2_offset"])
    assert (q.output_zero_point, q.output_multiplier, q.output_shift, q.left_shift) == (
        rec["output_offset"], rec["output_multiplier"], rec["output_shift"], 20)
    # the stride-2 block: the 1x1 s2 shortcut and the padded 3x3 s2 read the same value, with one zero ring
    first_add = stage.layers.index(add[0])
    readers = stage.consumers(first_add)
    assert len(readers) == 2 and len({stage.layers[i].quant.input_zero_point for i in readers}) == 1


def test_quant_params_recorded_for_every_call(vww):
    _, folded, _ = vww
    qp = quant_params(folded["main"])
    called = {b.value.args[0].name_hint for blk in folded["main"].body.blocks for b in blk.bindings
              if isinstance(b.value, relax.Call) and b.value.op.same_as(tvm.ir.Op.get("relax.call_tir"))}
    requantize = {c for c in called if c.startswith("requantize")}
    assert requantize and requantize <= set(qp)
    assert all(qp[c]["op"] == "requantize" for c in requantize)


def test_zero_point_pads_fold_into_convs(vww, mlperf_paths):
    """LowerToInteger's zero-point pads are part of the convolution that reads them: no layer of their own,
    the conv reads the unpadded tensor and carries the pad's widths and value."""
    _, folded, graph = vww
    assert "pad" not in [la.op for la in graph.layers]
    stem, dw = graph.layers[0], graph.layers[1]
    pad = folded["main"].body.blocks[0].bindings[0]
    assert pad.value.op.name == "relax.nn.pad" and stem.prologue == [pad.var]
    assert stem.op == "conv2d" and stem.inputs == graph.inputs and stem.pad_width == stem.padding == (0, 0, 1, 1)
    assert stem.pad_value == -128.0  # the input zero point
    assert dw.padding == (1, 1, 1, 1) and dw.pad_width == (1, 1, 1, 1) and dw.inputs == [stem.output]
    imported = build_graph(load(str(mlperf_paths["vww_96_int8"])).mod)  # the conv pads itself there
    assert imported.layers[0].padding == (0, 0, 1, 1) and imported.layers[0].pad_value is None
    assert check_split(graph, 1) is None  # the stem alone is a stage
    with pytest.raises(TvmPatchError, match="largest valid split is 27"):
        resolve_split(graph, 28, (2, 2))


def test_int8_stage_needs_lowering_parameters(vww):
    _, folded, graph = vww
    func = folded["main"].without_attr(QPARAMS_ATTR)
    with pytest.raises(TvmPatchError, match="LowerToInteger"):
        stage_from_graph(graph, 2, func)


def test_auto_split_on_lowered_graph(vww):
    """The mcunetv2 pipeline runs LowerToInteger, then PatchStage("auto"): the auto split works on int8 graphs."""
    _, folded, graph = vww
    n = best_split(graph, folded["main"], (4, 4))
    assert n is not None and check_split(graph, n, (4, 4)) is None


def test_qdq_stage_is_the_lowered_stage():
    """A QDQ model as imported: `stage_from_graph` refuses it (LowerToInteger first); `stage_from_qdq` gives
    the int8 stage PatchStage builds after lowering, from the same layers of the lowered graph, with the float
    model's geometry and patch-based figures."""
    from tvm_patch.patch.from_graph import is_qdq_stage, needs_integer_lowering, stage_from_qdq
    from tvm_patch.patch.memory import patch_memory

    qdq = load("zoo:mbv2-w0.35-r144:int8").mod
    qdq_folded = relax.transform.FoldConstant()(qdq)
    graph = build_graph(qdq_folded)
    n = resolve_split(graph, "block:5", (4, 4))
    assert is_qdq_stage(graph, n, qdq_folded["main"])
    with pytest.raises(TvmPatchError, match="LowerToInteger"):
        stage_from_graph(graph, n, qdq_folded["main"])
    stage, low = stage_from_qdq(qdq, graph, n)
    lgraph = build_graph(low)
    assert not is_qdq_stage(lgraph, n, low["main"]) and stage.dtype == "int8"
    assert needs_integer_lowering(qdq) and not needs_integer_lowering(low)
    assert not needs_integer_lowering(load("zoo:mbv2-w0.35-r144").mod)
    assert [la.name for la in lgraph.layers[:n]] == [la.name for la in graph.layers[:n]]
    assert resolve_split(lgraph, "block:5", (4, 4)) == n
    fmod = relax.transform.FoldConstant()(load("zoo:mbv2-w0.35-r144").mod)
    fgraph = build_graph(fmod)
    fstage, _ = stage_from_graph(fgraph, n, fmod["main"])
    def geometry(s):
        return [(type(la).__name__, getattr(la, "padding", None), getattr(la, "stride", None), la.input)
                for la in s.layers]

    assert geometry(stage) == geometry(fstage)
    m, fm = patch_memory(graph, stage, n, (4, 4)), patch_memory(fgraph, fstage, n, (4, 4))
    assert (m.peak_bytes, m.macs, m.patch_input_hw) == (fm.peak_bytes, fm.macs, fm.patch_input_hw)
