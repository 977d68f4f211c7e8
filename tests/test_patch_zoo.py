"""Every zoo model, 2x2 / 3x3 / 4x4 patches, three split points each: the patch-based stage equals the stage
computed layer by layer. The default run compares the stage PrimFuncs (the rest of the network is the same
code either way); the slow test runs whole patched modules against unpatched ones through `verify_patch`."""

from __future__ import annotations

import numpy as np
import pytest
from tvm import relax

from tvm_patch import zoo
from tvm_patch.export.prefold import prefold_constants
from tvm_patch.frontend import load
from tvm_patch.graph import build_graph
from tvm_patch.patch import build_reference, build_stage
from tvm_patch.patch.from_graph import stage_from_graph
from tvm_patch.patch.reference import compile_func, run_tvm
from tvm_patch.split import valid_splits
from tvm_patch.verify import verify_patch

PATCHES = (2, 3, 4)


def three_splits(graph) -> list[int]:
    """The first three block ends after the stem that are valid splits for every patch count (the stages
    MCUNetV2 patches; deeper ones are equally valid but slower to compile)."""
    ends = [n for n in valid_splits(graph, (max(PATCHES),) * 2)
            if n >= 2 and (n == len(graph.layers) or graph.layers[n].block != graph.layers[n - 1].block)]
    return ends[:3]


@pytest.fixture(scope="module", params=zoo.names())
def zoo_graph(request):
    # the numpy pre-fold first: FoldConstant alone takes 10-35 s per zoo model
    mod = relax.transform.FoldConstant()(prefold_constants(load(f"zoo:{request.param}").mod))
    return request.param, mod, build_graph(mod)


def test_patched_stages_equal_layer_by_layer(zoo_graph):
    name, mod, graph = zoo_graph
    splits = three_splits(graph)
    assert len(splits) == 3, (name, splits)
    rng = np.random.default_rng(0)
    for n in splits:
        stage, _ = stage_from_graph(graph, n, mod["main"])
        x = rng.uniform(-1, 1, size=stage.input_shape).astype("float32")
        ref = run_tvm(compile_func(build_reference(stage), fast=True), stage, x)
        scale = float(np.abs(ref).max())
        for p in PATCHES:
            got = run_tvm(compile_func(build_stage(stage, (p, p)), fast=True), stage, x)
            assert float(np.abs(got - ref).max()) <= 1e-5 * scale, (name, n, p)


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.names())
def test_patched_modules_equal_unpatched(name):
    mod = load(f"zoo:{name}").mod
    graph = build_graph(relax.transform.FoldConstant()(mod))
    for n in three_splits(graph):
        for p in PATCHES:
            r = verify_patch(mod, p, n, n_inputs=1)
            assert r.passed, (name, n, p, r)
