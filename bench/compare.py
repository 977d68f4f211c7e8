"""The paper's and the peers' published figures beside this run's measurements, as markdown, conventions stated."""

from __future__ import annotations

from typing import Any

from bench import peers
from bench.tables import kb, latency_cell, md_table, pct, sram_cell

PUB = "published"
MEASURED = "measured here"


def _entry(data: dict[str, Any], zoo_name: str) -> dict[str, Any] | None:
    """This run's entry for a zoo model, when its analytic profile was measured."""
    e = data["models"].get(zoo_name)
    return e if e and e.get("analytic") else None


def _cfg(e: dict[str, Any], sched: str) -> dict[str, Any]:
    return e.get("configs", {}).get(sched, {})


def table1(data: dict[str, Any]) -> list[str]:
    """MCUNetV2 Table 1 (MobileNetV2-224) against this run, if the run measured it."""
    t = peers.TABLE1
    e = _entry(data, t.model)
    if e is None:
        return [f"Not measured in this run ({t.model} not among the models)."]
    a = e["analytic"]
    ours_sched = f"4x4, auto split = {a['split_layers']} layers ({a['split_layer']})" if a["stage"] else "no stage"
    rows = [
        ["layer-by-layer peak", f"{t.layer_by_layer_bytes:,} B", f"{a['layer_by_layer_peak_bytes']:,} B"],
        ["patch-based peak", f"{t.patch_bytes:,} B ({t.schedule})", f"{a['patch_peak_bytes']:,} B ({ours_sched})"],
        ["reduction", f"{t.layer_by_layer_bytes / t.patch_bytes:.1f}x", f"{a['reduction']:.1f}x"],
        ["MACs", f"{t.macs / 1e6:.0f} M", f"{a['macs'] / 1e6:.1f} M"],
        ["network MAC overhead", f"+{t.network_mac_overhead:.0%} (in-image regions only: "
         f"+{t.in_image_network_mac_overhead:.1%})", pct(a["mac_overhead"])],
        ["stage MAC overhead", f"+{t.stage_mac_overhead:.0%} (in-image: +{t.in_image_stage_mac_overhead:.0%})",
         pct(a["stage_mac_overhead"])],
    ]
    return md_table(("", f"paper ({PUB})", f"tvm-patch ({MEASURED})"), rows) + [
        "", f"Source: {t.source}. Conventions: {t.convention}; {peers.OURS_ANALYTIC}. Ours skips padding in "
        "border patches (in-image regions only)."]


def fig5(data: dict[str, Any]) -> list[str]:
    """Fig. 5's range of reduction factors and MAC overheads against ours, for the zoo networks it covers."""
    f = peers.FIG5
    rows = []
    for name in f["models"]:
        e = _entry(data, name)
        if e is None:
            continue
        a = e["analytic"]
        inside = f["reduction_min"] <= a["reduction"] <= f["reduction_max"]
        rows.append([name, f"{f['reduction_min']}x - {f['reduction_max']}x",
                     f"+{f['mac_overhead_min']:.0%} - +{f['mac_overhead_max']:.0%}", f"{a['reduction']:.2f}x",
                     pct(a["mac_overhead"]), "yes" if inside else "no"])
    if not rows:
        return ["Not measured in this run (none of " + ", ".join(f["models"]) + ")."]
    return md_table(("model", f"paper reduction ({PUB})", f"paper MACs + ({PUB})", "ours reduction",
                     "ours MACs +", "within the paper's range"), rows) + [
        "", f"Source: {f['source']}; networks: {f['networks']}. Conventions: {f['convention']}; "
        f"{peers.OURS_ANALYTIC}. Ours: 4x4 patches at the auto split."]


def table2(data: dict[str, Any]) -> list[str]:
    """Table 2's SRAM and Flash for the zoo models it lists, against our analytic peaks and firmware."""
    rows = []
    board = data["conditions"]["board"]
    for r in peers.TABLE2:
        e = _entry(data, r.model)
        if e is None:
            continue
        a = e["analytic"]
        lx, px = _cfg(e, "layer_by_layer"), _cfg(e, "patch_4x4_auto")
        rows.append([r.model, f"{r.paper_name} on {r.board}", f"{r.macs / 1e6:.0f} M", kb(r.sram_bytes),
                     kb(r.flash_bytes), f"{a['macs'] / 1e6:.1f} M", kb(a["layer_by_layer_peak_bytes"]),
                     kb(a["patch_peak_bytes"]), kb(lx.get("sram_bytes")), kb(px.get("sram_bytes")),
                     kb(px.get("flash_bytes") or lx.get("flash_bytes"))])
    if not rows:
        return ["Not measured in this run (none of " + ", ".join(r.model for r in peers.TABLE2) + ")."]
    return md_table(("model", f"paper row ({PUB})", "paper MACs", "paper SRAM kB", "paper Flash kB", "ours MACs",
                     "ours analytic kB, per layer", "ours analytic kB, 4x4", f"ours firmware SRAM kB on {board}, "
                     "per layer", "ours firmware SRAM kB, 4x4", "ours Flash kB"), rows) + [
        "", f"Source: {peers.TABLE2_SOURCE} (the paper's models were searched for their board; ours are the zoo's "
        f"seeded networks of the same configs). Conventions: {peers.PAPER_DEVICE}; {peers.OURS_ANALYTIC}; "
        f"{peers.OURS_FIRMWARE}. kB = 1024 B."]


def peer_table(data: dict[str, Any]) -> list[str]:
    """TinyEngine's published H743 table (four libraries) beside our two schedules, per zoo model it lists."""
    out: list[str] = []
    board = data["conditions"]["board"]
    for name in peers.PEER_TABLE:
        e = _entry(data, name)
        if e is None:
            continue
        pub = peers.peers_for(name)
        rows = []
        for lib, v in pub["libraries"].items():
            rows.append([f"{lib} ({PUB})", peers.PEER_BOARD, "out of memory" if v.get("out_of_memory") else
                         kb(v["sram_bytes"]), "-" if v.get("out_of_memory") else f"{v['latency_ms']:,}"])
        for sched, label in (("layer_by_layer", "layer by layer"), ("patch_4x4_auto", "4x4 patches, auto split")):
            c = _cfg(e, sched)
            sram = sram_cell(c)
            rows.append([f"tvm-patch, {label} ({MEASURED})", board, kb(sram) if isinstance(sram, int) else sram,
                         latency_cell(c, mark=True)])
        out += [f"**{name}**", ""] + md_table(("library", "board", "SRAM kB", "latency ms"), rows) + [""]
    if not out:
        return ["Not measured in this run (none of " + ", ".join(peers.PEER_TABLE) + ")."]
    return out + [f"Source: {peers.TINYENGINE}. Conventions: {peers.PEER_DEVICE}; {peers.OURS_FIRMWARE}. "
                  f"Latency: {peers.LATENCY_PEER}; {peers.LATENCY_OURS}."]
