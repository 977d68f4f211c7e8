"""``tune_model``: a tuning session over a network's kernels with tvm.s_tir.meta_schedule.

The network is exported once as the board's build exports it (``board_build.fitted_export``: its program gives
the kernels as the export lowers them, the patch stage's PrimFunc included with --patches, and the kernels whose
weights stay int8 to fit the board's Flash, whose candidates are measured so and recorded under that form). Every
kernel the harness reproduces (harness.py; the patch stage included) becomes a TuneContext with its knobs
(space.py), its harness fed the network's own activations at its first call (activations.py): the design space, the evolutionary search, XGBoost's cost model, the JSON database in ``--db``; candidates are
built into harness exports (builder.py) and measured by a runner (runners.py). Before the search, each
kernel's reference output (unblocked) and its default schedule's cost are measured: the summary reports
default vs tuned per kernel. Ctrl-C stops the search and keeps every record committed so far.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import tempfile
import types
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from microtvm_projects.boards import get_board
from tqdm import tqdm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.cost_model import XGBModel
from tvm.s_tir.meta_schedule.arg_info import ArgInfo
from tvm.s_tir.meta_schedule.database import Database, TuningRecord
from tvm.s_tir.meta_schedule.measure_callback import (AddToDatabase, PyMeasureCallback, RemoveBuildArtifact,
                                                      UpdateCostModel)
from tvm.s_tir.meta_schedule.search_strategy import EvolutionarySearch
from tvm.s_tir.meta_schedule.space_generator import ScheduleFn

from tvm_patch.errors import TvmPatchError
from tvm_patch.board_build import fitted_export
from tvm_patch.export.api import ExportResult
from tvm_patch.export.lower import Program
from tvm_patch.export.blocking import DEFAULT_ROWS
from tvm_patch.tune.activations import call_inputs
from tvm_patch.tune.builder import HarnessBuilder
from tvm_patch.tune.features import TolerantFeatures
from tvm_patch.tune.harness import KernelHarness, kernel_program, network_rewrite, runs_in_place
from tvm_patch.tune.measure import RUNNERS, CandidateError
from tvm_patch.tune.records import UNITS, TunedKernels, check_database, open_database, tuning_target, workload
from tvm_patch.tune.runners import HarnessRunner, Measure, check_tracker, local_measure, rpc_key, rpc_measure
from tvm_patch.tune.space import Choice, fixed_trace, kernel_space

__all__ = ["KernelTuning", "TuneSummary", "tune_model"]

log = logging.getLogger("tvm_patch.tune")


@dataclass
class KernelTuning:
    """One kernel's session: its knobs' choices (the blockings; whether the packing is a knob; the unrolling
    always is), the default schedule's cost, the best record's."""

    name: str
    calls: int
    choices: list[int]
    pack_knob: bool
    default_rows: int
    default_cost: float | None
    default_packed: bool = True
    best_rows: int | None = None
    best_packed: bool | None = None
    best_unrolled: bool | None = None
    best_outlined: list[int] | None = None  # a patch stage's outlined layer nests
    best_peeled: bool | None = None  # a patch stage's patch loops peeled
    nests: int = 0  # a patch stage's layer nests (the outlining knob's)
    down_default: bool | None = None  # a patch stage's odd-column form by default (its knob's; None: no knob)
    best_paired_down: bool | None = None  # its odd last columns paired down
    best_cost: float | None = None
    failed: int = 0
    int8_weights: bool = False  # measured on int8 weights: the board's build narrows them to fit its Flash


@dataclass
class TuneSummary:
    """What a session did, for the CLI (table or JSON). Costs in ``unit``."""

    model: str
    board: str
    runner: str
    unit: str
    db: str
    trials: int
    measured: int
    interrupted: bool
    kernels: list[KernelTuning] = field(default_factory=list)
    untunable: list[str] = field(default_factory=list)

    def totals(self) -> tuple[float, float] | None:
        """The kernels' costs weighted by their calls, default and tuned (the best record; the default where none
        is better), over the kernels whose default was measured: what the session saves per inference, copies
        between kernels aside. None when no default was measured."""
        measured = [k for k in self.kernels if k.default_cost is not None]
        if not measured:
            return None
        return (sum(k.calls * k.default_cost for k in measured),
                sum(k.calls * min(k.default_cost, k.best_cost or k.default_cost) for k in measured))

    def to_json(self) -> dict[str, Any]:
        totals = self.totals()
        return dict(asdict(self), totals=None if totals is None else {"default": totals[0], "tuned": totals[1]})


@derived_object
class _Progress(PyMeasureCallback):
    """tqdm bar: trials measured and the best cost so far; each failed candidate logged in one line."""

    def __init__(self, bar: tqdm, names: list[str], failed: dict[str, int], stop: _StopFlag) -> None:
        super().__init__()
        self.stop = stop
        self.bar = bar
        self.names = names
        self.failed = failed
        self.best: dict[str, float] = {}
        self.count = 0

    def apply(self, task_scheduler: Any, task_id: int, measure_candidates: list, builder_results: list,
              runner_results: list) -> None:
        name = self.names[task_id]
        if self.stop.seen:
            self.count += sum(1 for r in runner_results if r.run_secs)
            for i in range(len(self.names)):
                task_scheduler.terminate_task(i)
            return
        for b, r in zip(builder_results, runner_results):
            err = b.error_msg or r.error_msg
            if err:
                self.failed[name] = self.failed.get(name, 0) + 1
                self.bar.write(f"tvm-patch tune: {name}: candidate failed, skipped: {err.splitlines()[0]}",
                               file=sys.stderr)
            elif r.run_secs:
                self.best[name] = min(self.best.get(name, float("inf")), float(r.run_secs[0]))
        self.count += len(runner_results)
        self.bar.update(len(runner_results))
        if name in self.best:
            self.bar.set_postfix_str(f"{name[:32]} best {self.best[name]:,.6g}")


@contextlib.contextmanager
def _without_tensor_intrinsics() -> Iterator[None]:
    """TuneContext imports tvm.s_tir.tensor_intrin (TVM's CUDA, ROCm, x86, Arm... tensor intrinsics) on
    construction: 25-75 s of TVMScript parsing on this machine, for intrinsics a "c" target never uses. A
    placeholder module stands in while the contexts are made and is removed after (a real import later works)."""
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        yield
        return
    sys.modules[name] = types.ModuleType(name)
    try:
        yield
    finally:
        del sys.modules[name]


class _StopFlag:
    """Ctrl-C during the search sets a flag instead of raising inside meta_schedule's C++ loop (a
    KeyboardInterrupt thrown through it crashed the process): the runner stops measuring and the progress
    callback terminates the tasks, so the session ends with its records. A second Ctrl-C raises as usual.
    Main thread only (signals)."""

    def __init__(self) -> None:
        self.seen = False
        self.previous: Any = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)

    def uninstall(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.seen:
            self.uninstall()
            raise KeyboardInterrupt
        self.seen = True


def _tunable_kernels(res: ExportResult, model: str, kernels: list[str] | None) -> tuple[dict[str, KernelHarness],
                                                                                     list[str]]:
    """The harness of each kernel the harness reproduces in the form the network's export emitted it (those named in
    ``kernels`` if given), and the others' names."""
    prog = res.program
    unknown = sorted(set(kernels or ()) - set(prog.funcs))
    if unknown:
        raise TvmPatchError(f"--kernel {unknown[0]}: no such kernel in {model}; its kernels: {', '.join(prog.funcs)}")
    harnesses: dict[str, KernelHarness] = {}
    untunable = []
    for name, func in prog.funcs.items():
        if kernels and name not in kernels:
            continue
        h = KernelHarness(name, kernel_program(prog, name), "none", widened=name not in res.wide_narrowed)
        n_out = next(c.n_outputs for c in prog.calls if c.func == name)
        found = network_rewrite(func, DEFAULT_ROWS, res.kernel_funcs[name], n_out)
        if found is None:  # the harness could not reproduce the network's kernel: measuring it would lie
            log.warning("%s: the network's schedule of this kernel is not one the harness reproduces; skipped", name)
            untunable.append(name)
            continue
        h.blocking, h.rewrite = found
        h.in_place = runs_in_place(res.kernel_funcs[name])  # not in place in the network: never in its harness
        harnesses[name] = h
    if not harnesses:
        raise TvmPatchError(f"{model}: the tuning harness reproduces none of the kernels asked for as the export emits "
                            f"them ({', '.join(untunable[:3])}); name others with --kernel")
    return harnesses, untunable


def _defaults(harnesses: dict[str, KernelHarness], prog: Program, measure: Measure, board: str, timeout_sec: float,
              work: Path, db: Database, target: Any, summary: TuneSummary, progress: bool) -> dict[str, list[bytes]]:
    """Each kernel's reference outputs (unblocked, host build) and its default schedule's cost, which is also
    committed as a record (a build never picks a schedule slower than the default); returns the references."""
    ref_measure = local_measure(board, "host", timeout_sec)
    references: dict[str, list[bytes]] = {}
    for name, h in tqdm(harnesses.items(), desc="defaults", unit="kernel", disable=not progress):
        references[name] = ref_measure(h.export(Choice(), work / "reference" / name / "export"), None).outputs
        choices = h.row_choices
        packs = h.packs
        default = Choice(DEFAULT_ROWS if not choices or DEFAULT_ROWS in choices else 1, True)
        try:
            cost: float | None = measure(h.export(default, work / "default" / name / "export"), references[name]).cost
        except CandidateError as e:
            log.warning("%s: default schedule failed: %s", name, e.one_line())
            cost = None
        else:
            trace = fixed_trace(name, h.workload_func, default, bool(choices), packs, h.nests,  # unrolling off, inline
                                h.down_default)
            db.commit_tuning_record(TuningRecord(trace, db.commit_workload(workload(h.workload_func)), [cost], target,
                                                 ArgInfo.from_prim_func(h.func)))
        summary.kernels.append(KernelTuning(name, sum(c.func == name for c in prog.calls), choices, packs,
                                            default.rows, cost, int8_weights=not h.widened, nests=h.nests,
                                            down_default=h.down_default))
    return references


def _unit(runner: str, rpc_runner: str) -> str:
    kind = rpc_runner if runner == "rpc" else runner
    return UNITS[kind]


def tune_model(model: str, board: str, *, trials: int = 16, runner: str = "emulator", db_dir: str | Path = "tuning_db",
               patches: int | None = None, split: int | str | None = None, halo: str = "recompute",
               kernels: list[str] | None = None,
               tracker: tuple[str, int] | None = None, rpc_runner: str = "emulator", parallel: int = 1,
               timeout_sec: float = 120.0, port: str | None = None, probe: str | None = None, seed: int = 1,
               progress: bool = True, emulator_memory: str = "board") -> TuneSummary:
    """Tune ``model``'s kernels for ``board`` (see the module doc); records go to ``db_dir``. ``emulator_memory``
    "machine": the kernels in the form `build --emulator-memory machine` gives them (a network the board cannot
    hold, its weights widened as QEMU's memory allows; each kernel is still measured in a harness of its own)."""
    b = get_board(board)
    if runner not in RUNNERS:
        raise TvmPatchError(f"unknown --runner {runner!r}; use one of {', '.join(RUNNERS)}")
    if runner == "rpc" and tracker is None:
        raise TvmPatchError("--runner rpc needs --tracker HOST:PORT")
    if trials < 1:
        raise TvmPatchError(f"--trials {trials}: give at least 1")
    if runner == "rpc":
        check_tracker(tracker, rpc_key(board, rpc_runner))
    check_database(db_dir)  # made only once the model exported and its kernels were found (no empty one left)
    measured_by = rpc_runner if runner == "rpc" else runner
    target = tuning_target(b.core, measured_by)
    with tempfile.TemporaryDirectory(prefix="tvmp_tune_") as tmp:
        work = Path(tmp)
        res = fitted_export(model, work / "network", board, patches=patches, split=split, halo=halo,
                            timeout_sec=timeout_sec, emulator_memory=emulator_memory)
        harnesses, untunable = _tunable_kernels(res, model, kernels)
        db = open_database(db_dir, create=True)
        network_input = [(work / "network" / "io" / f"input{i}.bin").read_bytes() for i in range(len(res.program.inputs))]
        activations = call_inputs(res.program, res.arena_plan.tensor_offsets, work / "network" / "export",
                                  network_input, list(harnesses), timeout_sec)
        for name, h in harnesses.items():  # each kernel measured on the network's own activations where they are known
            h.inputs = activations.get(name)
        failed: dict[str, int] = {}
        if runner == "rpc":
            measure = rpc_measure(tracker, rpc_key(board, rpc_runner), timeout_sec)
        else:
            measure = local_measure(board, runner, timeout_sec, port, probe)
        summary = TuneSummary(model, board, runner, _unit(runner, rpc_runner), str(db_dir), trials, 0, False,
                              untunable=untunable)
        references = _defaults(harnesses, res.program, measure, board, timeout_sec, work, db, target, summary,
                               progress)
        names = list(harnesses)
        with _without_tensor_intrinsics():
            spaces = [kernel_space(n, bool(k.choices), k.pack_knob, nests=k.nests, down_default=k.down_default)
                      for n, k in zip(harnesses, summary.kernels)]
            contexts = [ms.TuneContext(workload(h.workload_func), target=target,
                                       space_generator=ScheduleFn(space, sch_rules=[], postprocs=[], mutator_probs={}),
                                       search_strategy=EvolutionarySearch(population_size=16, init_min_unmeasured=8,
                                                                          genetic_num_iters=2),
                                       task_name=n, rand_state=seed, num_threads=1)
                        for (n, h), space in zip(harnesses.items(), spaces)]
        cand_dir = work / "candidates"
        cand_dir.mkdir()
        stop = _StopFlag()
        run = HarnessRunner(measure, references, parallel, stopped=lambda: stop.seen)
        bar = tqdm(total=trials, desc="tune", unit="trial", disable=not progress)
        progress_cb = _Progress(bar, names, failed, stop)
        try:
            stop.install()
            ms.tune_tasks(tasks=contexts, task_weights=[float(k.calls) for k in summary.kernels],
                          work_dir=str(work / "ms"), max_trials_global=trials,
                          max_trials_per_task=trials, num_trials_per_iter=max(2, parallel),
                          builder=HarnessBuilder(harnesses, cand_dir), runner=run, database=db,
                          cost_model=XGBModel(extractor=TolerantFeatures(), num_warmup_samples=2, num_tuning_cores=1),
                          measure_callbacks=[AddToDatabase(), RemoveBuildArtifact(), UpdateCostModel(), progress_cb],
                          task_scheduler="round-robin")
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            stop.uninstall()
            summary.interrupted = summary.interrupted or stop.seen
            bar.close()
            run.pool.shutdown(wait=False, cancel_futures=True)
        summary.measured = progress_cb.count
        best = TunedKernels(db, b.core, measured_by)
        for k in summary.kernels:
            found = best.best(harnesses[k.name].workload_func)
            if found is not None:
                k.best_rows, k.best_packed, k.best_unrolled, k.best_cost = (found[0].rows, found[0].packed,
                                                                            found[0].unrolled, found[1])
                k.best_outlined, k.best_peeled = list(found[0].outlined), found[0].peeled
                k.best_paired_down = found[0].paired_down if k.down_default is not None else None
            k.failed = failed.get(k.name, 0)
    return summary
