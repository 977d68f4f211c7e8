"""The patch stage loop nest by loop nest: each top-level loop nest of the patch body (a layer, its copies, or
the input's quantization into the first patch) counted (features.exec_counts over all patches) and measured
(the generated firmware instrumented with a counter reading before each loop nest and after the last,
accumulated over the patches into extra entries of the per-kernel profile). The stage's linear model is fitted
on these loop nests beside the whole stages: each is one layer's operations, so the per-operation costs are told
apart far better than by whole stages, where every layer kind is summed together."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import tvm_ffi
from tvm import tirx

from tvm_patch.codegen import C_TARGET
from tvm_patch.codegen.c_kernels import lower_plain
from tvm_patch.cost.features import exec_counts
from tvm_patch.errors import TvmPatchError
from tvm_patch.names import PATCHES_ATTR
from tvm_patch.patch.stage_forms import ONE_NEST


def patch_body(func: tirx.PrimFunc) -> tuple[Any, list[Any]]:
    """The innermost patch loop of a stage (the second loop of its nest) and the statements of its body."""
    loops: list[Any] = []

    def on_for(f: Any) -> tvm_ffi.WalkResult:
        loops.append(f)
        return tvm_ffi.WalkResult.ADVANCE if len(loops) < 2 else tvm_ffi.WalkResult.SKIP

    tvm_ffi.structural_walk(func.body, [(tirx.For, on_for)], order="pre")
    body = loops[1].body
    while not isinstance(body, tirx.SeqStmt) and hasattr(body, "body"):
        body = body.body
    return loops[1], list(body.seq) if isinstance(body, tirx.SeqStmt) else [body]


def _opens_block(stmt: Any) -> bool:
    """A loop, or a branch with an else (the export's choice between a region's rows as one run and as rows,
    codegen/channel_rows.py ``_flat_rows``, which no other top-level statement is): one block in the C."""
    return isinstance(stmt, tirx.For) or (isinstance(stmt, tirx.IfThenElse) and stmt.else_case is not None)


def _is_loop_nest(stmt: Any) -> bool:
    """A top-level loop nest of the patch body: a statement that opens a block (_opens_block), or a form's
    statements kept one (`stage_forms.one_nest`)."""
    return _opens_block(stmt) or (isinstance(stmt, tirx.AttrStmt) and stmt.attr_key == ONE_NEST)


def c_blocks(stmt: Any) -> int:
    """How many blocks a statement of the patch body opens at the body's level of the C: one a loop or a branch
    with an else (``for (``, ``if (``); a `one_nest` form shows its statements only (its loops, a column's pair
    loop and the odd one's, one after the other), so it opens as many as they do; any other statement none."""
    if _opens_block(stmt):
        return 1
    if isinstance(stmt, tirx.AttrStmt):
        return c_blocks(stmt.body)
    return sum(c_blocks(s) for s in stmt.seq) if isinstance(stmt, tirx.SeqStmt) else 0


def loop_nest_counts(func: tirx.PrimFunc) -> list[dict[str, float]]:
    """The executed counts (features.exec_counts) of each top-level loop nest of the patch body of a stage, over
    all patches: the stage with every other loop nest of the body removed (the lets and allocations kept), so that
    the loop nests' counts add up to the stage's."""
    loop, stmts = patch_body(func)
    body = loop.body
    while not isinstance(body, tirx.SeqStmt) and hasattr(body, "body"):
        body = body.body
    fors = [i for i, st in enumerate(stmts) if _is_loop_nest(st)]
    # a statement between loop nests (a barrier, a cache mode's guarded copy) is counted with the loop nest before
    # it, as the instrumented C measures it (a reading before each loop nest: instrument()); the first loop nest
    # takes those before it; lets and allocations are kept for every loop nest
    owner = {j: max([i for i in fors if i <= j], default=fors[0] if fors else j) for j in range(len(stmts))}
    lets = [s for s in stmts if isinstance(s, (tirx.Bind, tirx.AllocBuffer))]

    def counts(kept: list[Any]) -> dict[str, float]:
        seq = tirx.SeqStmt(kept) if len(kept) > 1 else kept[0] if kept else tirx.Evaluate(0)
        return exec_counts(func.with_body(tvm_ffi.structural_map(
            func.body, [(tirx.SeqStmt, lambda s: seq if s.same_as(body) else s)])))

    # what runs outside the patch body (the stage's prologue) is in every such count: the first loop nest keeps it
    outside = counts(lets)
    out = []
    for i in fors:
        e = counts([s for j, s in enumerate(stmts) if owner[j] == i or any(s.same_as(x) for x in lets)])
        out.append(e if not out else {k: v - outside.get(k, 0.0) for k, v in e.items()})
    return out


def instrument(project: Path, loop_var: str, n_calls: int, blocks: list[int]) -> None:
    """Add a counter reading before each top-level loop nest of the stage's patch body (loop ``loop_var``) and
    after the last, accumulated per loop nest into the profile's extra entries ``n_calls`` + k; loop nest k opens
    ``blocks``[k] blocks at the body's level of the C (c_blocks), the reading goes before its first. Edits the
    generated project's model.c, tvmp_model.h and firmware.c (this copy only)."""
    model_c = next(project.rglob("model.c"))
    src = model_c.read_text().split("\n")
    start = next(i for i, line in enumerate(src) if line.startswith("void tvmp_patch_stage("))
    head = next(i for i in range(start, len(src)) if re.match(rf"\s+for \(int32_t {loop_var} ", src[i]))
    indent = len(src[head]) - len(src[head].lstrip()) + 2
    close = next(i for i in range(head + 1, len(src)) if src[i] == " " * (indent - 2) + "}")
    pad = " " * indent
    # the blocks opened at the body's level (c_blocks): a loop, or a branch whose block's closing line at the same
    # indentation an ``} else {`` follows
    opened = [i for i in range(head + 1, close) if src[i].startswith(pad + "for (") or (
        src[i].startswith(pad + "if (")
        and src[next(j for j in range(i + 1, close + 1) if src[j].startswith(pad + "}"))] == pad + "} else {")]
    if len(opened) != sum(blocks):
        raise TvmPatchError(f"{len(opened)} blocks at the level of the patch body in its C, {sum(blocks)} in its TIR "
                            f"({len(blocks)} loop nests): cannot match them")
    firsts = {opened[sum(blocks[:k])]: k for k in range(len(blocks))}
    out = []
    for i, line in enumerate(src):
        if i in firsts:
            out.append(pad + f"tvmp_layer_mark({firsts[i]});")
        if i == close:
            out.append(pad + f"tvmp_layer_mark({len(blocks)});")
        out.append(line)
        if i == head:
            out.append(pad + "tvmp_layer_mark(-1);")
    hook = ("uint64_t tvmp_counter_now(void);\nvoid tvmp_layer_add(uint32_t i, uint64_t ticks);\n"
            "static uint64_t tvmp_layer_t;\nstatic void tvmp_layer_mark(int k) { uint64_t t = tvmp_counter_now(); "
            f"if (k > 0) tvmp_layer_add({n_calls - 1} + (uint32_t)k, t - tvmp_layer_t); "
            "tvmp_layer_t = tvmp_counter_now(); }\n")
    model_c.write_text("\n".join(out).replace("void tvmp_patch_stage(", hook + "void tvmp_patch_stage(", 1))
    header = next(project.rglob("tvmp_model.h"))
    text, calls = header.read_text(), f"#define TVMP_NUM_CALLS {n_calls}\n"
    if calls not in text:
        raise TvmPatchError(f"{header}: no TVMP_NUM_CALLS {n_calls} to extend; the project layout changed")
    header.write_text(text.replace(calls, f"#define TVMP_NUM_CALLS {n_calls + len(blocks)}\n"))
    fw = next(project.rglob("firmware.c"))
    run = "/* ------------------------------------------------------------------ the run */"
    fw.write_text(fw.read_text().replace(run, "void tvmp_layer_add(uint32_t i, uint64_t ticks) { prof_count[i] += "
                                         "tvmp_counter_to_count(ticks); prof_name[i] = \"stage_layer\"; }\n" + run, 1))


def _lowered_stage(result: Any) -> tirx.PrimFunc | None:
    """The patch stage of an export ``result`` lowered as the C export lowers it; None without a stage."""
    stage = next((n for n, f in result.kernel_funcs.items() if f.attrs is not None and PATCHES_ATTR in f.attrs), None)
    return None if stage is None else lower_plain(result.kernel_funcs, C_TARGET)[0][stage]


def stage_nest_counts(result: Any) -> list[dict[str, float]] | None:
    """The executed counts of each loop nest of the patch stage of an export ``result`` (loop_nest_counts);
    None without a stage (refeature recounts a record's loop nests with it)."""
    func = _lowered_stage(result)
    return None if func is None else loop_nest_counts(func)


def instrument_stage(result: Any, project: Path) -> list[dict[str, float]] | None:
    """Instrument the generated ``project`` of an export ``result`` loop nest by loop nest (instrument()); the
    loop nests' executed counts, in order (their measured counts are the profile's entries from
    len(result.program.calls) on: measured_nests()); None when the export has no patch stage."""
    func = _lowered_stage(result)
    if func is None:
        return None
    counts = loop_nest_counts(func)
    loop, stmts = patch_body(func)
    instrument(project, str(loop.loop_var.name), len(result.program.calls), [c_blocks(s) for s in stmts
                                                                             if _is_loop_nest(s)])
    return counts


def measured_nests(counts: list[dict[str, float]], measured: dict[int, int], n_calls: int,
                   halo_cache: int) -> list[dict[str, Any]]:
    """The loop nest rows of a record: each nest's executed counts and measured count (profile entry n_calls + i),
    ``loop_nest`` set (the stage model's constant and per-patch terms are 0 for a loop nest)."""
    return [{"loop_nest": i, "exec": e, "halo_cache": halo_cache, "patches": 0, "measured": measured.get(n_calls + i)}
            for i, e in enumerate(counts)]


def consistent(stage: dict[str, Any], nests: list[dict[str, Any]], tolerance: float = 0.02) -> bool:
    """Do the loop nests add up to their stage row, in executed MACs and stores (exactly, up to rounding) and in
    measured counts (within ``tolerance``: the code between the loop nests)? A stage whose patch body is not a
    sequence of layer loop nests (the cache mode's) does not, and its loop nests are not kept."""
    if not nests or any(not n.get("measured") for n in nests) or not stage.get("measured"):
        return False
    for key in ("all_macs", "stores"):
        if abs(sum(n["exec"][key] for n in nests) - stage["exec"][key]) > 1e-6 * max(1.0, stage["exec"][key]):
            return False
    return abs(sum(n["measured"] for n in nests) / stage["measured"] - 1) <= tolerance
