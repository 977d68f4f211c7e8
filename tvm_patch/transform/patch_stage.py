"""PatchStage: run a CNN's first stage patch by patch (MCUNetV2 Sec. 3.1) as one TIR loop nest.

The pass finds the first `split` layers of `main` (a layer count as `tvm-patch profile` numbers them,
`"block:N"`, or `"auto"`: the fewest MACs among the splits within 10 % of the smallest analytic peak, none
if no split lowers the peak), describes them as a `tvm_patch.patch.Stage`, builds one PrimFunc that loops over p x p output
patches (`tvm_patch.patch.cache_stage.build_recompute_stage`: each patch computes its whole region, the halo
recomputed; with `halo="cache"`, `tvm_patch.patch.cache_stage.build_cached_stage`:
raster order, each intermediate element computed once, the halo kept in row and column caches; `halo="auto"`:
the mode `best_schedule` picks), and replaces the stage by one `call_tir` to it with the weights as constant
arguments. The rest of the network is untouched, so the module still computes the same outputs.
"""

from __future__ import annotations

import tvm
from tvm import relax

from tvm_patch.errors import TvmPatchError
from tvm_patch.graph import build_graph
from tvm_patch.names import PATCHES_ATTR, STAGE_FUNC, STAGE_LAYOUT_ATTR
from tvm_patch.patch import param_arrays
from tvm_patch.patch.from_graph import stage_from_graph
from tvm_patch.patch.cache_stage import build_cached_stage, build_recompute_stage
from tvm_patch.patch.memory import best_halo, best_schedule
from tvm_patch.patch.regions import HALO_MODES
from tvm_patch.split import resolve_split



@relax.expr_functor.mutator
class _ReplaceBinding(relax.PyExprMutator):
    """Rebind one variable to a new value; the stage's now-unused bindings are removed afterwards by DCE."""

    def __init__(self, mod: tvm.IRModule, target: relax.Var, make_value) -> None:
        super().__init__(mod)
        self.target = target
        self.make_value = make_value

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var.same_as(self.target):
            value = self.make_value(self)
            new = (self.builder_.emit(value, name_hint=STAGE_FUNC + "_out") if isinstance(binding.var, relax.DataflowVar)
                   else self.builder_.emit_output(value, name_hint=STAGE_FUNC + "_out"))
            self.set_var_remap(binding.var, new)
        else:
            super().visit_var_binding_(binding)


@tvm.transform.module_pass(opt_level=0, name="PatchStage")
class PatchStage:
    """Replace the first `split` layers of `main` by one patch-based `call_tir` over `patches` patches."""

    def __init__(self, split: int | str, patches: tuple[int, int] | int = (4, 4), halo: str = "recompute") -> None:
        self.split = split
        if halo not in (*HALO_MODES, "auto"):
            raise TvmPatchError(f"halo must be one of {', '.join(HALO_MODES)} or auto, got {halo!r}")
        self.halo = halo
        self.patches = (patches, patches) if isinstance(patches, int) else tuple(int(p) for p in patches)
        if len(self.patches) != 2 or min(self.patches) < 1:
            raise TvmPatchError(f"patches must be a positive count or a (rows, cols) pair, got {patches}")

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        mod = relax.transform.FoldConstant()(mod)
        graph = build_graph(mod)
        func = mod["main"]
        halos = HALO_MODES if self.halo == "auto" else (self.halo,)
        if str(self.split) == "auto":
            best = best_schedule(graph, func, self.patches, halos)
            if best is None:
                return mod
            n, halo = best.split, best.halo
        else:
            n = resolve_split(graph, self.split, self.patches)
            halo = self.halo if self.halo != "auto" else best_halo(graph, func, n, self.patches).halo
        stage, stage_input = stage_from_graph(graph, n, func)
        if halo == "cache":
            prim = build_cached_stage(stage, self.patches)
        else:
            prim = build_recompute_stage(stage, self.patches)
        prim = prim.with_attr("global_symbol", STAGE_FUNC)
        prim = prim.with_attr(PATCHES_ATTR, list(self.patches))  # the C export reads its input patch by patch
        prim = prim.with_attr(STAGE_LAYOUT_ATTR, stage.layout)
        out = graph.layers[n - 1].out_var
        out_ty = relax.TensorType(graph.tensors[graph.layers[n - 1].output].shape, stage.dtype)
        consts = [relax.const(a) for a in param_arrays(stage)]

        def make(mutator: _ReplaceBinding) -> relax.Expr:
            gv = mutator.builder_.add_func(prim, STAGE_FUNC)
            return relax.call_tir(gv, relax.Tuple([mutator.visit_expr(stage_input), *consts]), out_ty)

        mutator = _ReplaceBinding(mod, out, make)
        new_func = mutator.visit_expr(func)
        new_mod = mutator.builder_.get()
        new_mod["main"] = new_func
        return relax.transform.DeadCodeElimination()(new_mod)
