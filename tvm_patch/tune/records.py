"""The tuning database (meta_schedule's JSONDatabase in a directory) and how a build applies it.

Records are keyed by workload: the kernel's PrimFunc before blocking, as the export lowers it (structural
equality), marked when its weights stay int8 (export/wide_weights.py: ``weights_key``), so a record applies to the
same kernel, its weights in the same form, in any build of any model. Each record's target names
the core (``mcpu``) and the runner (``model``: emulator, device or host); a build takes, per kernel, the
fastest record on its board's core of the most faithful runner that measured it (device, emulator, host).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import tvm
from microtvm_projects.boards import get_board
from tvm import tirx
from tvm.s_tir.meta_schedule.database import JSONDatabase

from tvm_patch.errors import TvmPatchError
from tvm_patch.export.blocking import DEFAULT_ROWS
from tvm_patch.export.wide_weights import INT8_WEIGHTS_ATTR
from tvm_patch.tune.space import Choice, trace_choice

__all__ = ["WORKLOADS", "RECORDS", "UNITS", "TunedKernels", "check_database", "database_digest", "open_database",
           "tuned_kernels", "tuning_target", "workload"]

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
TOP_K = 64
RUNNER_PRECEDENCE = ("device", "emulator", "host")
UNITS = {"emulator": "instructions", "device": "cycles", "host": "seconds"}  # what each runner's records count


def tuning_target(core: str, runner: str) -> tvm.target.Target:
    """The target a record is stored under: plain C for ``core``, measured by ``runner``."""
    return tvm.target.Target({"kind": "c", "mcpu": core, "model": runner})


def workload(func: tirx.PrimFunc) -> tvm.IRModule:
    """The module a kernel is tuned and looked up as."""
    return tvm.IRModule({"main": func})


def check_database(db_dir: str | Path) -> None:
    """A one-line error if ``db_dir`` cannot be a tuning database: a file, or holding unreadable records (a session
    checks this before its export, and makes the directory only after it)."""
    path = Path(db_dir)
    if path.exists() and not path.is_dir():
        raise TvmPatchError(f"{db_dir}: not a directory; give the --db directory of a `tvm-patch tune` session")
    for name in (WORKLOADS, RECORDS):
        f = path / name
        if f.exists():
            try:
                for n, line in enumerate(f.read_text().splitlines(), 1):
                    if line.strip():
                        json.loads(line)
            except (OSError, UnicodeDecodeError, ValueError) as e:
                where = f" line {n}" if isinstance(e, ValueError) else ""
                raise TvmPatchError(f"{f}{where}: unreadable tuning database ({type(e).__name__}); remove it or "
                                    "tune again into a new --db") from None


def open_database(db_dir: str | Path, create: bool) -> JSONDatabase:
    """The JSONDatabase in ``db_dir`` (made when ``create``); a missing or unreadable one is a one-line error."""
    path = Path(db_dir)
    check_database(path)
    if not create and not (path / RECORDS).is_file():
        raise TvmPatchError(f"{db_dir}: no tuning records ({RECORDS} missing); run `tvm-patch tune MODEL --board B "
                            f"--db {db_dir}` first")
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return JSONDatabase(work_dir=str(path), allow_missing=create)
    except (OSError, RuntimeError, ValueError) as e:  # TVM's errors are RuntimeErrors
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise TvmPatchError(f"{db_dir}: unreadable tuning database ({first}); remove it or tune again") from None


def tuned_kernels(db_dir: str | Path | None, board: str | None = None) -> TunedKernels | None:
    """The records of ``db_dir`` as a build applies them: those of ``board``'s core (any core without a board);
    None without a database."""
    if db_dir is None:
        return None
    return TunedKernels(open_database(db_dir, create=False), get_board(board).core if board else None)


def database_digest(db_dir: str | Path) -> str:
    """A hash of the database's records and workloads (a cache key: predictions made with it change with it)."""
    h = hashlib.sha256()
    for name in (WORKLOADS, RECORDS):
        f = Path(db_dir) / name
        h.update(f.read_bytes() if f.is_file() else b"")
        h.update(b"\0")
    return h.hexdigest()[:20]


class TunedKernels:
    """``export_model(rows=..., packing=..., unroll=..., outline=..., peel=..., pairs_down=...)`` from a database:
    per kernel, the blocking, the constants' packing, the unrolling and (patch stages) the outlined nests, the
    peeling and the odd columns' form of its fastest record (or the export's defaults); ``used`` records which
    kernels took a tuned schedule, for the build's JSON."""

    def __init__(self, db: JSONDatabase, core: str | None = None, runner: str | None = None) -> None:
        self.db = db
        self.core = core
        self.runner = runner
        self.used: dict[str, dict[str, Any]] = {}
        self._chosen: dict[tuple[str, bool], tuple[Choice, dict[str, Any]] | None] = {}

    def best(self, func: tirx.PrimFunc) -> tuple[Choice, float, str] | None:
        """(choice, cost, runner) of the fastest matching record of ``func``'s workload, None if it has none.
        Costs of different runners are not compared: the records of the most faithful runner present win
        (device cycles, then emulator instructions, then host seconds). A kernel keyed int8 (``weights_key``: its
        weights not widened) without records of that form takes those of its widened form: a session measured
        that one only (the weights all fitted its board, or a build without one)."""
        mod = workload(func)
        if not self.db.has_workload(mod) and INT8_WEIGHTS_ATTR in (func.attrs or {}):
            mod = workload(func.without_attr(INT8_WEIGHTS_ATTR))
        if not self.db.has_workload(mod):
            return None
        best: dict[str, tuple[Choice, float]] = {}
        for rec in self.db.get_top_k(self.db.commit_workload(mod), TOP_K):  # fastest first
            attrs = rec.target.attrs if rec.target is not None else {}
            runner = str(attrs.get("model", ""))
            if self.core is not None and str(attrs.get("mcpu", "")) != self.core:
                continue
            if self.runner is not None and runner != self.runner:
                continue
            choice = trace_choice(rec.trace)
            if choice is not None and rec.run_secs and runner not in best:
                best[runner] = choice, float(sum(float(x) for x in rec.run_secs) / len(rec.run_secs))
        for runner in (*RUNNER_PRECEDENCE, *sorted(best)):
            if runner in best:
                return (*best[runner], runner)
        return None

    def choice(self, name: str, func: tirx.PrimFunc) -> Choice | None:
        """Kernel ``name``'s tuned choice (``func``: its PrimFunc before blocking, the workload), None if untuned.
        ``used`` holds the latest lookup's: a build that narrows weights to fit the Flash exports again with them."""
        key = (name, INT8_WEIGHTS_ATTR in (func.attrs or {}))
        if key not in self._chosen:
            found = self.best(func)
            self._chosen[key] = (found[0], {"rows": found[0].rows, "packed": found[0].packed,
                                            "unrolled": found[0].unrolled, "outlined": list(found[0].outlined),
                                            "peeled": found[0].peeled, "paired_down": found[0].paired_down,
                                            "cost": found[1], "runner": found[2]}
                                 ) if found is not None else None
        chosen = self._chosen[key]
        if chosen is None:
            self.used.pop(name, None)
            return None
        self.used[name] = chosen[1]
        return chosen[0]

    def __call__(self, name: str, func: tirx.PrimFunc) -> int:
        """The blocking of kernel ``name`` (``export_model``'s ``rows`` callable)."""
        found = self.choice(name, func)
        return DEFAULT_ROWS if found is None else found.rows

    def packed(self, name: str, func: tirx.PrimFunc) -> bool:
        """Whether kernel ``name``'s per-channel constants are packed (``export_model``'s ``packing`` callable)."""
        found = self.choice(name, func)
        return True if found is None else found.packed

    def unroll(self, name: str, func: tirx.PrimFunc) -> bool:
        """Whether kernel ``name`` is compiled with GCC's loop unroller (``export_model``'s ``unroll`` callable)."""
        found = self.choice(name, func)
        return False if found is None else found.unrolled

    def outline(self, name: str, func: tirx.PrimFunc) -> tuple[int, ...]:
        """Which layer nests of patch stage ``name`` are outlined (``export_model``'s ``outline`` callable)."""
        found = self.choice(name, func)
        return () if found is None else found.outlined

    def peel(self, name: str, func: tirx.PrimFunc) -> bool:
        """Whether patch stage ``name``'s patch loops are peeled (``export_model``'s ``peel`` callable)."""
        found = self.choice(name, func)
        return False if found is None else found.peeled

    def pairs_down(self, name: str, func: tirx.PrimFunc) -> bool | None:
        """Whether patch stage ``name`` computes its odd last columns in pairs down them (``export_model``'s
        ``pairs_down`` callable; None: the stage's default, patch/stage_forms.py)."""
        found = self.choice(name, func)
        return None if found is None else found.paired_down

    def measured(self, unit: str) -> dict[str, float]:
        """Per kernel of the latest export that took a record: its cost per call, where the record's runner counts
        ``unit`` (emulator: instructions, device: cycles). A record measures the kernel on the network's own
        activations in a one-kernel firmware: within 0.05 % of its count in the network (docs/cost-model.md)."""
        return {name: u["cost"] for name, u in self.used.items() if UNITS.get(u["runner"]) == unit}

    def export_args(self) -> dict[str, Any]:
        """``export_model``'s (and ``build_for_board``'s) arguments that apply this database."""
        return {"rows": self, "packing": self.packed, "unroll": self.unroll, "outline": self.outline, "peel": self.peel,
                "pairs_down": self.pairs_down}

    def to_json(self, rows_default: int = DEFAULT_ROWS) -> dict[str, Any]:
        return {"default_rows": rows_default, "default_packed": True, "default_unrolled": False, "default_outlined": [],
                "default_peeled": False, "default_paired_down": None,
                "tuned_kernels": dict(self.used)}
