"""results.md: the run's measured tables, and the paper's and peers' published figures beside them."""

from __future__ import annotations

from typing import Any, Iterable

from bench.parity import parity_extra
from bench.results import count, schedule_macs

SCHEDULE_LABEL = {"layer_by_layer": "layer by layer", "patch_4x4_auto": "4x4, auto split", "plan": "plan --fast"}
NOT_BUILT = "cycles on a real board (nothing has run on one; `--runner device` needs one attached)"


def fmt(v: Any) -> str:
    """An integer with thousands separators, a float to 2 places, '-' for None."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.2f}"
    return str(v)


def kb(v: int | None) -> str:
    """Bytes as whole kB (1024 B), '-' for None."""
    return "-" if v is None else f"{v / 1024:,.0f}"


def pct(v: float | None) -> str:
    """A signed percentage, '-' for None."""
    return "-" if v is None else f"{v:+.1%}"


def ratio(a: int | None, b: int | None) -> str:
    """a / b as '1.23x', '-' when either is missing."""
    return f"{a / b:.2f}x" if a and b else "-"


def md_table(headers: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    """A markdown table, cells formatted by fmt."""
    headers = list(headers)
    rows = [[fmt(c) for c in r] for r in rows]
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _ok(entries: dict[str, Any]) -> list[dict[str, Any]]:
    """The entries whose analytic profile was measured."""
    return [e for e in entries.values() if e.get("analytic")]


def summary_rows(data: dict[str, Any]) -> list[list[Any]]:
    """The main table: per model and schedule, memory, fit, MACs, run and bit-exactness."""
    rows = []
    for e in data["models"].values():
        for sched, c in e.get("configs", {}).items():
            run = c.get("run") or {}
            export = c.get("export") or {}
            measured = count(run)
            lat = run.get("latency_ms")
            lat_s = "-" if lat is None else f"{lat:,.1f}{' (est.)' if run.get('latency_estimated') else ''}"
            fits = c.get("fits") if c.get("fits") is not None else ("error" if c["status"] == "error" else None)
            rows.append([e["model"], SCHEDULE_LABEL[sched], export.get("arena_bytes"), c.get("sram_bytes"),
                         c.get("flash_bytes"), fits, schedule_macs(e, sched), measured, lat_s, run.get("bit_exact")])
    return rows


SUMMARY_HEADERS = ("model", "schedule", "arena B", "SRAM B", "Flash B", "fits", "MACs", "instructions/cycles",
                   "latency ms", "bit-exact")


def plan_table(data: dict[str, Any]) -> list[str]:
    """`tvm-patch plan --fast`'s choice per model: its predictions beside the firmware and the run measured."""
    rows = []
    for e in data["models"].values():
        c = e.get("configs", {}).get("plan")
        if not c or not c.get("plan"):
            continue
        p, run = c["plan"], c.get("run") or {}
        where = "layer by layer" if p["split"] is None else \
            f"split {p['split']}, {p['patches'][0]}x{p['patches'][1]}, {p['halo']}"
        measured = count(run)
        pred = p.get("predicted_instructions")
        err = f"{(pred - measured) / measured:+.1%}" if pred and measured else "-"
        rows.append([e["model"], where if p.get("fits") else "nothing fits", p.get("sram_bytes"), c.get("sram_bytes"),
                     p.get("flash_bytes"), c.get("flash_bytes"), pred, measured, err])
    return md_table(("model", "plan", "SRAM predicted", "SRAM firmware", "Flash predicted", "Flash firmware",
                     "instructions predicted", "measured", "error"), rows)


def summary_table(data: dict[str, Any]) -> list[str]:
    """The main table (also the README's)."""
    return md_table(SUMMARY_HEADERS, summary_rows(data))


def _pair(lbl: Any, patched: Any, fmt_one=fmt) -> str:
    """'per layer / patched' in one cell."""
    return f"{fmt_one(lbl)} / {fmt_one(patched)}"


def sram_cell(c: dict[str, Any]) -> Any:
    """Firmware SRAM, or why there is none."""
    if c.get("status") == "ok":
        return c["sram_bytes"]
    if c.get("status") == "does_not_fit":
        return f"does not fit ({(c.get('message') or '').split(':')[0]})"
    return "error"


def latency_cell(c: dict[str, Any], mark: bool = False) -> str:
    """Latency in whole ms ('-' without a run); with `mark`, '(estimated)' after an emulator estimate."""
    run = c.get("run") or {}
    if run.get("latency_ms") is None:
        return "-"
    return f"{run['latency_ms']:,.0f}" + (" (estimated)" if mark and run.get("latency_estimated") else "")


def model_table(data: dict[str, Any]) -> list[str]:
    """One row per model, each cell 'layer by layer / 4x4 patches': the README's table."""
    rows = []
    for e in _ok(data["models"]):
        a = e["analytic"]
        lx, px = (e["configs"].get(k, {}) for k in ("layer_by_layer", "patch_4x4_auto"))
        exact = [(c.get("run") or {}).get("bit_exact") for c in (lx, px) if c.get("run")]
        rows.append([e["model"], f"{a['macs'] / 1e6:,.1f} M", pct(a["mac_overhead"]),
                     _pair(a["layer_by_layer_peak_bytes"], a["patch_peak_bytes"]),
                     _pair(sram_cell(lx), sram_cell(px)), _pair(lx.get("flash_bytes"), px.get("flash_bytes")),
                     _pair(latency_cell(lx), latency_cell(px), str), all(exact) if exact else None])
    run = "est. latency ms" if data["conditions"]["runner"] == "emulator" else "latency ms"
    return md_table(("model", "MACs", "MACs + (4x4)", "analytic peak B", "firmware SRAM B", "Flash B", run,
                     "bit-exact"), rows)


KINDS = (("conv1x1", "1x1"), ("depthwise", "depthwise"), ("dense", "dense"))


def kernel_table(data: dict[str, Any]) -> list[str]:
    """Issue 13's goals, measured: instructions (cycles on a board) per MAC layer by layer, against TVM's plain
    kernels, per op kind, and the patched build against layer by layer x (1 + its MAC overhead + 2 %), beside what
    it would count with the stage's layers at their per-layer kernels' speed (`bench.parity`)."""
    rows = []
    for e in _ok(data["models"]):
        k, a = e.get("kernels") or {}, e["analytic"]
        lx, px = ((e["configs"].get(c) or {}).get("run") or {} for c in ("layer_by_layer", "patch_4x4_auto"))
        lcount, pcount = count(lx) or k.get("micro"), count(px)  # "micro": counted with the QEMU machine's memory
        if not lcount or k.get("status") != "ok":
            continue
        kinds = k.get("per_kind") or {}
        other = [f"{v['per_mac']:.2f}" for n, v in sorted(kinds.items())
                 if n not in dict(KINDS) and v.get("per_mac") is not None]
        bound = 1 + a["mac_overhead"] + 0.02 if a["stage"] else None
        patched = "-" if not pcount or bound is None else \
            f"{pcount / lcount:.3f}x (bound {bound:.3f}x: {'within' if pcount / lcount <= bound else 'over'})"
        extra = parity_extra(k.get("calls") or [], a.get("stage_layer_macs") or [],
                             a.get("stage_input_reads")) if a["stage"] else None
        machine = k.get("emulator_memory") == "machine"
        name = e["model"] + (" (QEMU's memory: does not fit the board)" if machine else "")
        rows.append([name, a["macs"], lcount, f"{lcount / a['macs']:.2f}", k["plain"], ratio(k["plain"], lcount),
                     *[f"{kinds[n]['per_mac']:.2f}" if kinds.get(n, {}).get("per_mac") else "-" for n, _ in KINDS],
                     " / ".join(other) or "-", patched, "-" if extra is None else f"{(lcount + extra) / lcount:.3f}x"])
    return md_table(("model", "MACs", "instructions", "per MAC", "plain kernels", "x fewer",
                     *[f"{label} per MAC" for _, label in KINDS], "k x k per MAC", "4x4 patched / layer by layer",
                     "at kernel parity"), rows)


def patch_table(data: dict[str, Any]) -> list[str]:
    """Analytic per-layer vs patched peak, MAC overhead, the split, what the stage PrimFunc allocates."""
    rows = []
    for e in _ok(data["models"]):
        a = e["analytic"]
        hw = "x".join(map(str, a["patch_input_hw"])) if a["patch_input_hw"] else "-"
        split = f"{a['split_layers']} ({a['split_layer']})" if a["stage"] else "no stage"
        rows.append([e["model"], kb(a["layer_by_layer_peak_bytes"]), kb(a["patch_peak_bytes"]),
                     f"{a['reduction']:.2f}x", a["macs"], pct(a["mac_overhead"]), pct(a["stage_mac_overhead"]),
                     split, hw, a["tir_allocated_bytes"]])
    return md_table(("model", "per layer kB", "patched kB", "reduction", "MACs", "MACs +", "stage MACs +",
                     "split (layers)", "patch input", "stage TIR alloc B"), rows)


def export_table(data: dict[str, Any]) -> list[str]:
    """The plain-C arena against the analytic peak, the planner's bound, TVM's plan and TFLite Micro's arena."""
    rows = []
    for e in data["models"].values():
        lx = e.get("configs", {}).get("layer_by_layer", {}).get("export") or {}
        px = e.get("configs", {}).get("patch_4x4_auto", {}).get("export") or {}
        if not lx and not px:
            continue
        tflm = lx.get("tflm_arena_head_bytes") or px.get("tflm_arena_head_bytes")
        rows.append([e["model"], lx.get("arena_bytes"), lx.get("analytic_peak_bytes"), lx.get("lower_bound_bytes"),
                     lx.get("tvm_static_plan_bytes"), tflm, ratio(tflm, lx.get("arena_bytes")), px.get("arena_bytes"),
                     px.get("analytic_patch_peak_bytes"), ratio(tflm, px.get("arena_bytes")),
                     lx.get("inplace_calls"), lx.get("export_seconds"), px.get("export_seconds")])
    return md_table(("model", "arena", "analytic", "bound", "TVM plan", "TFLM", "TFLM/arena", "patched arena",
                     "patched analytic", "TFLM/patched", "in-place calls", "export s", "patched export s"), rows)


def firmware_table(data: dict[str, Any]) -> list[str]:
    """The firmware as linked and run: SRAM parts, Flash, instructions per MAC, stack used, bit-exactness, time."""
    rows = []
    for e in data["models"].values():
        for sched, c in e.get("configs", {}).items():
            if c["status"] != "ok":
                continue
            run = c.get("run") or {}
            macs = schedule_macs(e, sched)
            instructions = run.get("instructions")
            per_mac = f"{instructions / macs:.2f}" if instructions and macs else "-"
            rows.append([e["model"], SCHEDULE_LABEL[sched], c["sram_bytes"], c["arena_bytes"], c["stack_bytes"],
                         c["data_bss_bytes"], c["flash_bytes"], instructions, run.get("cycles"), per_mac,
                         run.get("stack_used_bytes"), run.get("bit_exact"), c["seconds"]])
    return md_table(("model", "schedule", "SRAM B", "arena", "stack", "data/bss", "Flash B", "instructions", "cycles",
                     "instr/MAC", "stack used", "bit-exact", "s"), rows)


def failures(data: dict[str, Any]) -> list[str]:
    """Every schedule that did not fit or failed, with its one-line reason."""
    lines = []
    for e in data["models"].values():
        if e.get("status") == "error" and e.get("error") and not e.get("configs"):
            lines.append(f"- {e['model']}: error: {e['error']}")
        for sched, c in e.get("configs", {}).items():
            if c["status"] != "ok":
                word = "does not fit" if c["status"] == "does_not_fit" else "error"
                lines.append(f"- {e['model']}, {SCHEDULE_LABEL[sched]}: {word}: {c['message']}")
        if e.get("configs") and e.get("analytic") is None and e.get("error"):
            lines.append(f"- {e['model']}, profile: error: {e['error']}")
    return lines or ["- none"]
