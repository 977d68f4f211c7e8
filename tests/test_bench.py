"""The benchmark runner: its four kinds of output, their documented keys and plausible values, and its errors."""

from __future__ import annotations

import csv
import glob
import json
import shutil
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import peers
from bench.conditions import conditions
from bench.markdown import render
from bench.measure import PLAN_SOURCE, SCHEDULES
from bench.parity import parity_extra
from bench.tables import kernel_table
from bench.results import CSV_COLUMNS, csv_rows
from bench.run import main
from microtvm_projects.boards import get_board

REPO = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CONDITION_KEYS = {"board", "board_name", "core", "clock_mhz", "caches", "board_sram_bytes", "board_flash_bytes",
                  "runner", "opt", "compiler", "tvm_patch_version", "git_commit", "started", "command"}
ENTRY_KEYS = {"model", "spec", "zoo_name", "status", "error", "plan_source", "configs", "analytic", "sha256",
              "published", "seconds"}
CONFIG_KEYS = {"patches", "split", "status", "message", "run", "fits", "sram_bytes", "flash_bytes", "arena_bytes",
               "stack_bytes", "data_bss_bytes", "board_sram_bytes", "board_flash_bytes", "conditions", "export",
               "seconds"}
ANALYTIC_KEYS = {"convention", "macs", "layer_by_layer_peak_bytes", "peak_layer", "stage", "layers",
                 "patch_peak_bytes", "patch_peak_bytes_with_input", "reduction", "patched_macs", "mac_overhead",
                 "stage_mac_overhead", "stage_layer_macs", "stage_input_reads", "split_layers", "split_layer", "patches",
                 "patch_input_hw", "stage_peak_bytes", "after_stage_peak_bytes", "tir_allocated_bytes"}


def bench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m bench.run` from the repository, as a user would."""
    return subprocess.run([sys.executable, "-m", "bench.run", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def check_outputs(out: Path, models: set[str]) -> dict:
    """The four kinds of output exist and agree; returns results.json."""
    data = json.loads((out / "results.json").read_text())
    assert data["complete"] is True and data["elapsed_seconds"] > 0
    assert CONDITION_KEYS <= set(data["conditions"])
    cond = data["conditions"]
    assert cond["board"] == "h743" and cond["clock_mhz"] == 480 and cond["runner"] == "emulator"
    assert cond["compiler"].startswith("arm-none-eabi-gcc") and len(cond["git_commit"]) in (40, len("unknown"))
    assert set(data["models"]) == models
    for key, e in data["models"].items():
        assert ENTRY_KEYS <= set(e), key
        assert e["status"] == "ok", (key, e["error"])
        assert len(e["sha256"]) == 64
        assert ANALYTIC_KEYS <= set(e["analytic"])
        a = e["analytic"]
        assert a["macs"] > 0 and a["patch_peak_bytes"] <= a["layer_by_layer_peak_bytes"]
        assert a["patched_macs"] >= a["macs"] and a["mac_overhead"] >= 0
        assert sum(p - m for m, p in a["stage_layer_macs"]) == a["patched_macs"] - a["macs"]
        calls = e["kernels"]["calls"]  # the profiled layer-by-layer run, call by call
        assert sum(c["macs"] for c in calls) == a["macs"] and all(c["instructions"] > 0 for c in calls)
        if a["stage"]:  # the patched build at kernel parity: the stage's calls scaled up by their extra MACs
            assert a["stage_input_reads"][1] >= a["stage_input_reads"][0] > 0  # recompute: the regions overlap
            extra = parity_extra(calls, a["stage_layer_macs"], a["stage_input_reads"])
            assert extra > 0 if a["mac_overhead"] else extra == 0
        assert set(e["configs"]) == set(SCHEDULES)
        for sched, c in e["configs"].items():
            assert CONFIG_KEYS <= set(c), (key, sched)
            assert c["status"] == "ok" and c["fits"] is True, (key, sched, c["message"])
            assert c["sram_bytes"] == c["arena_bytes"] + c["stack_bytes"] + c["data_bss_bytes"]
            assert 0 < c["sram_bytes"] <= c["board_sram_bytes"] and 0 < c["flash_bytes"] <= c["board_flash_bytes"]
            assert c["arena_bytes"] == c["export"]["arena_bytes"] and c["export"]["export_seconds"] > 0
            run = c["run"]
            assert run["bit_exact"] is True and run["instructions"] > 0 and run["latency_estimated"] is True
            assert run["latency_ms"] == pytest.approx(run["instructions"] * cond["qemu_cpi"] / (480 * 1e3))
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == len(models) * len(SCHEDULES)
    for row, want in zip(rows, csv_rows(data)):
        e = data["models"][row["model"]]
        c = e["configs"][row["schedule"]]
        assert int(row["ram_bytes"]) == c["sram_bytes"] and int(row["rom_bytes"]) == c["flash_bytes"]
        assert int(row["instructions"]) == c["run"]["instructions"] and row["bit_exact"] == "True"
        assert row == {k: "" if v is None else str(v) for k, v in want.items()}
    md = (out / "results.md").read_text()
    assert "## Per model" in md and "published" in md and md == render(data)
    pngs = sorted(out.glob("*.png"))
    assert {p.name for p in pngs} >= {"latency_sram_h743.png", *(f"memory_{m}.png" for m in models),
                                      *(f"peaks_{m}.png" for m in models)}
    for p in pngs:
        assert p.stat().st_size > 1000 and p.read_bytes()[:8] == PNG_SIGNATURE, p
    return data


@pytest.mark.slow  # about 2 minutes: make test-all runs it; the default run checks kws alone (below)
def test_bench_quick(tmp_path):
    """`--quick` (vww, kws, mcunet-in0): every output within the 5-minute budget, patched vww
    below its per-layer peak, the plan's source and the published figures labelled, the kernel figures."""
    r = bench("--board", "h743", "--quick", "--out", str(tmp_path), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    data = check_outputs(tmp_path, {"vww_96_int8", "kws_int8", "mcunet-in0"})
    assert data["elapsed_seconds"] < 300
    vww = data["models"]["vww_96_int8"]
    assert vww["analytic"]["patch_peak_bytes"] < vww["analytic"]["layer_by_layer_peak_bytes"]
    assert vww["configs"]["patch_4x4_auto"]["sram_bytes"] < vww["configs"]["layer_by_layer"]["sram_bytes"]
    assert vww["configs"]["layer_by_layer"]["export"]["tflm_arena_head_bytes"] > 0
    assert vww["plan_source"] == PLAN_SOURCE
    for key, e in data["models"].items():  # `plan --fast`'s choice: built, and its SRAM as predicted
        planned = e["configs"]["plan"]
        assert planned["plan"]["fits"] and planned["plan"]["sram_bytes"] == planned["sram_bytes"], key
    assert data["models"]["mcunet-in0"]["published"]["peers"]["published"] is True
    assert "took" in r.stdout and "| vww_96_int8 |" in r.stdout
    kws = data["models"]["kws_int8"]["kernels"]  # issue 13's figures: measured against the plain kernels
    assert kws["status"] == "ok" and kws["plain"] > data["models"]["kws_int8"]["configs"]["layer_by_layer"]["run"]["instructions"]
    assert {"conv1x1", "depthwise", "dense"} <= set(kws["per_kind"])
    md = (tmp_path / "results.md").read_text()
    assert "## Cortex-M kernels" in md and "| kws_int8 | 2,656,768 |" in md
    assert "## The plan `tvm-patch plan --fast` chooses" in md


def one_error_line(capsys, *args: str) -> str:
    """Run the CLI in this process; it must print nothing on stdout, one line on stderr, and return 2."""
    assert main(list(args)) == 2
    got = capsys.readouterr()
    lines = got.err.strip().splitlines()
    assert got.out == "" and len(lines) == 1 and lines[0].startswith("bench: error: "), got.err
    return lines[0]


@pytest.mark.parametrize("args, words", [
    (["--board", "z999"], "unknown board 'z999'"),
    (["--board", "h743", "--models", "no-such-net"], "unknown model 'no-such-net'"),
    (["--board", "h743", "--models", "zoo:no-such-net"], "unknown zoo model"),
    (["--board", "h743", "--models", "/nonexistent/m.tflite"], "not found"),
    (["--board", "h743", "--runner", "jtag"], "unknown runner 'jtag'"),
    (["--board", "h743", "--bogus"], "unrecognized arguments"),
    (["--models", "kws"], "required: --board"),
    (["--board", "h743", "--tuning", "-1"], "--tuning -1: give a number of trials"),
])
def test_bad_command_line_is_one_line_exit_2(args, words, tmp_path, capsys):
    assert words in one_error_line(capsys, *args, "--out", str(tmp_path / "o"))
    assert not (tmp_path / "o").exists() or words == "unrecognized arguments"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out_is_one_line_exit_2(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    assert "cannot write to --out" in one_error_line(capsys, "--board", "h743", "--models", "kws", "--out",
                                                     str(ro / "x"))


def test_unwritable_out_file_is_one_line_exit_2(tmp_path, capsys):
    """--out below an existing file (unwritable as a folder, even for root)."""
    f = tmp_path / "file"
    f.write_text("")
    assert "cannot write to --out" in one_error_line(capsys, "--board", "h743", "--models", "kws", "--out",
                                                     str(f / "sub"))


def test_bad_board_as_a_user_sees_it(tmp_path):
    """The same through `python -m bench.run`: exit code 2, one line, no traceback."""
    r = bench("--board", "z999", "--out", str(tmp_path), timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown board" in r.stderr


def test_published_figures_are_labelled_with_source_and_convention():
    """Every published figure carries published=True, a source and a memory convention."""
    for model in ("mbv2-w1.0-r224", "mnasnet-a1-r224", "mcunet-in2", "mcunet-in4", "proxyless-w0.3-r176",
                  "mbv2-w0.35-r144"):
        pub = peers.published_for(model)
        assert pub, model
        for fig in pub.values():
            assert fig["published"] is True and fig["source"] and fig["convention"]
    assert peers.published_for("mcunet-in4")["peers"]["libraries"]["TFLite Micro"] == {"out_of_memory": True}
    assert peers.published_for("mcunet-in2")["peers"]["libraries"]["TinyEngine"] == {"latency_ms": 280,
                                                                                     "sram_bytes": 215 * 1024}
    assert peers.TABLE1.patch_bytes == 175_616 and peers.published_for("vww") == {}


def test_kernel_table_gives_the_patched_build_at_kernel_parity():
    """The kernel table's last column: the patched build with the stage's layers' calls scaled by their patched
    MACs (bench/parity.py), over the layer-by-layer count; '-' without a stage."""
    calls = [{"name": "stem", "kind": "conv3x3", "macs": 100, "instructions": 300},
             {"name": "pw", "kind": "conv1x1", "macs": 300, "instructions": 400},
             {"name": "fc", "kind": "dense", "macs": 100, "instructions": 300}]
    per_kind = {c["kind"]: {"per_mac": c["instructions"] / c["macs"]} for c in calls}
    entry = {"model": "m", "status": "ok", "kernels": {"status": "ok", "plain": 5000, "per_kind": per_kind,
                                                       "calls": calls},
             "analytic": {"macs": 500, "stage": True, "mac_overhead": 0.2, "stage_layer_macs": [[100, 200]]},
             "configs": {"layer_by_layer": {"run": {"instructions": 1000}},
                         "patch_4x4_auto": {"run": {"instructions": 1400}}}}
    md = "\n".join(kernel_table({"models": {"m": entry}}))
    assert "at kernel parity |" in md and "| 1.400x (bound 1.220x: over) | 1.300x |" in md
    entry["analytic"].update(stage=False, mac_overhead=0.0, stage_layer_macs=[])
    assert kernel_table({"models": {"m": entry}})[-1].endswith("| - | - |")


def test_kernels_too_large_for_the_board_are_counted_with_the_machines_memory(tmp_path, monkeypatch):
    """On the emulator a network the board cannot hold is counted on its core with QEMU's memory: every build of
    the kernel figures after the first refusal takes it, the refusal is kept, and the table takes the micro-kernel
    count from there (no layer-by-layer run) and says so beside the model."""
    from microtvm_projects.boards import get_board
    from microtvm_projects.errors import FitError
    from bench import measure
    from bench.models import Model

    seen = []

    def fake_build(spec, out, board, *, run, runner, emulator_memory="board", kernels="micro", profile=False):
        seen.append((out.name, emulator_memory))
        if emulator_memory == "board":
            raise FitError("Flash: needs at least 1,197,000 B (weights 1,190,000 + input 7,000), f412 has 1,048,576 B")
        n = 5000 if kernels == "plain" else 1100 if profile else 1000
        return {"run": {"instructions": n, "per_kind": {"conv1x1": {"per_mac": 2.0}}, "kernels": []}}

    monkeypatch.setattr(measure, "build_for_board", fake_build)
    k = measure.measure_kernels(Model("m", "m.tflite", None), get_board("f412"), "emulator", tmp_path)
    assert seen == [("plain", "board"), ("plain", "machine"), ("profile", "machine"), ("micro", "machine")]
    assert k["status"] == "ok" and k["emulator_memory"] == "machine" and "f412 has" in k["board_fit"]
    assert (k["plain"], k["micro"]) == (5000, 1000)
    entry = {"model": "m", "status": "ok", "kernels": k, "analytic": {"macs": 500, "stage": False},
             "configs": {"layer_by_layer": {"status": "does_not_fit", "run": None}}}
    assert "| m (QEMU's memory: does not fit the board) | 500 | 1,000 | 2.00 | 5,000 | 5.00x |" \
        in "\n".join(kernel_table({"models": {"m": entry}}))
    # on a board there is no machine to fall back on: the refusal is the entry's error
    on_board = measure.measure_kernels(Model("m", "m.tflite", None), get_board("f412"), "device", tmp_path)
    assert on_board["status"] == "error"


@pytest.mark.parametrize("runner,measured", [("emulator", True), ("device", False)])
def test_a_network_the_board_refuses_gets_its_kernel_figures_on_the_emulator(runner, measured, monkeypatch):
    """measure_model: the kernel figures are measured when the layer-by-layer build fits, and on the emulator also
    when it does not (QEMU's memory, measure_kernels); never after a failure on a board."""
    from microtvm_projects.boards import get_board
    from bench import measure
    from bench.models import Model

    refused = {"status": "does_not_fit", "message": "Flash: ...", "run": None}
    monkeypatch.setattr(measure, "measure_schedule", lambda *a, **k: dict(refused))
    monkeypatch.setattr(measure, "measure_planned", lambda *a, **k: dict(refused))
    monkeypatch.setattr(measure, "measure_kernels", lambda *a, **k: {"status": "ok"})
    monkeypatch.setattr(measure, "analytic", lambda *a, **k: {})
    entry = measure.measure_model(Model("m", "m.tflite", None), get_board("f412"), runner)
    assert ("kernels" in entry) == measured


def test_the_tuning_comparison_has_its_section_in_results_md():
    """With --tuning, results.md holds each model's tuned-vs-untuned 1x1 comparison (bench/tuning.py's rows),
    an error as its line; without, no such section."""
    row = {"index": 2, "kernel": "k1", "macs": 100, "untuned": 50, "tuned": 45, "verdict": "better"}
    data = {"schema": 1, "conditions": conditions(get_board("h743"), "emulator", []), "models": {}, "complete": True,
            "elapsed_seconds": 1.0}
    assert "## Tuned vs untuned" not in render(data)
    data["tuning"] = [{"model": "/m/kws_int8.tflite", "network": {"untuned": 90, "tuned": 85},
                       "bit_exact": {"untuned": True, "tuned": True}, "conv1x1": {"untuned": 50, "tuned": 45},
                       "layers": [row], "tuned_kernels": {"k1": {"rows": 4, "unrolled": True},
                                                          "s": {"rows": 4, "peeled": True, "paired_down": False}}},
                      {"model": "vww", "error": "tune: timeout after 3600 s: tune vww"}]
    md = render(data).split("## Tuned vs untuned")[1].split("\n## ")[0]
    assert "### kws_int8.tflite" in md and "1 better, 0 equal, 0 worse" in md and "`k1` rows 4, unrolled" in md
    assert "`s` rows 4, patches peeled, odd columns alone" in md
    assert "| 2 | `k1` | 100 | 50 | 45 | better |" in md and "### vww" in md and "error: tune: timeout" in md


def test_failing_model_is_recorded_and_the_others_run(tmp_path):
    """A corrupt model gets an error entry with one line; the model after it is measured as usual."""
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"not a flatbuffer" * 8)
    out = tmp_path / "out"
    r = bench("--board", "h743", "--models", str(bad), "kws", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads((out / "results.json").read_text())
    broken, kws = data["models"]["broken"], data["models"]["kws_int8"]
    assert broken["status"] == "error" and broken["error"] and "\n" not in broken["error"]
    assert all(c["status"] == "error" for c in broken["configs"].values())
    assert kws["status"] == "ok" and kws["configs"]["layer_by_layer"]["run"]["bit_exact"] is True
    md = (out / "results.md").read_text()
    assert "broken" in md.split("## Did not fit or failed")[1]
    assert len(list(csv.DictReader((out / "results.csv").open()))) == 2 * len(SCHEDULES)  # a row per schedule
    # kws measured in full (test_bench_quick's checks on one small model, for the default run)
    for sched, c in kws["configs"].items():
        assert c["status"] == "ok" and c["fits"] is True and c["run"]["bit_exact"] is True, (sched, c["message"])
        assert c["sram_bytes"] == c["arena_bytes"] + c["stack_bytes"] + c["data_bss_bytes"]
    planned = kws["configs"]["plan"]  # `plan --fast`'s choice: built, and its SRAM as predicted
    assert planned["plan"]["fits"] and planned["plan"]["sram_bytes"] == planned["sram_bytes"]
    assert kws["plan_source"] == PLAN_SOURCE
    kernels = kws["kernels"]  # issue 13's figures: measured against the plain kernels
    assert kernels["status"] == "ok" and kernels["plain"] > kws["configs"]["layer_by_layer"]["run"]["instructions"]
    assert {"conv1x1", "depthwise", "dense"} <= set(kernels["per_kind"])
    assert "## Cortex-M kernels" in md and "| kws_int8 | 2,656,768 |" in md
    assert "## The plan `tvm-patch plan --fast` chooses" in md


def test_interrupt_keeps_what_was_measured(tmp_path):
    """Ctrl-C after the first model: results.json holds it, marked incomplete; exit 130."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "bench.run", "--board", "h743", "--models", "kws", "vww",
                             "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = out / "results.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (results.exists() and "kws_int8" in results.read_text()):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    data = json.loads(results.read_text())
    assert data["complete"] is False and "kws_int8" in data["models"]
    assert "interrupted" in (out / "results.md").read_text()


@pytest.mark.skipif(bool(glob.glob("/dev/ttyACM*")), reason="a board may be attached")
def test_device_runner_without_a_board_keeps_the_firmware_figures(tmp_path):
    """--runner device with no board: each schedule is an error with one line, its firmware sizes still measured."""
    r = bench("--board", "h743", "--models", "kws", "--runner", "device", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["conditions"]["runner"] == "device" and data["conditions"]["qemu_cpi"] is None
    for c in data["models"]["kws_int8"]["configs"].values():
        assert c["status"] == "error" and "\n" not in c["message"] and c["run"] is None
        assert c["fits"] is True and c["sram_bytes"] == c["arena_bytes"] + c["stack_bytes"] + c["data_bss_bytes"]
    assert (tmp_path / "latency_sram_h743.png").read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
                    reason="make setup installs arm-none-eabi-gcc and qemu-system-arm")
def test_line_profile_counts_each_nest_exactly(tmp_path):
    """bench.line_profile on a fixture kernel of two loop nests split by tvmp_barrier(), each a loop of exactly 2
    instructions an iteration, called three times with known counts (once for 4 M instructions, during which QEMU
    stops the loop's block and translates it again: the trace's blocks told apart by their translations): per line
    and per nest the exact instructions; and on a kernel that calls such a loop out of line: the call's line counts
    the BL and everything the callee ran."""
    from bench.line_profile import execution, line_counts, nests
    from conftest import FIRMWARE_FIXTURES, run_test_firmware
    from microtvm_projects.boards import get_board

    board = get_board("f412")
    elf, _ = run_test_firmware(FIRMWARE_FIXTURES / "line_profile.c", board, tmp_path, "-g")
    run = execution(elf, board)
    per_line = line_counts(elf, run, "two_nests")
    source = (FIRMWARE_FIXTURES / "line_profile.c").read_text().splitlines()
    first, second = nests(source, "two_nests")
    # called with (1000, 3000), (7, 11), (2000000, 1): a bx lr each
    assert per_line == {first[0] + 1: 2 * (1000 + 7 + 2000000), second[0]: 2 * (3000 + 11 + 1), second[0] + 1: 3}
    assert sum(n for ln, n in per_line.items() if second[0] <= ln < second[1]) == 2 * 3012 + 3
    call = source.index("    out_of_line(k);") + 1
    calling = line_counts(elf, run, "calls_out")
    assert calling[call] == (1 + 2 * 500 + 1) + (1 + 2 * 20 + 1)  # bl; the callee's loop and its bx lr; twice
    assert calling[call - 1] == calling[call + 2] == 2  # push, pop: the function's own lines, as before


def test_line_profile_outside_a_project_is_one_line(tmp_path):
    """The profile build is made (or found up to date) through the project API first, so a folder that is no project
    is the API's one line; a project's stale ELF is rebuilt as `tvm-patch run` rebuilds it (test_board_projects)."""
    proc = subprocess.run([sys.executable, "-m", "bench.line_profile", str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"line_profile: {tmp_path}: not a board project (no tvmp_project.json)")


def test_line_profile_bad_line_range_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.line_profile", str(tmp_path), "--lines", "90"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("line_profile: --lines '90': give two line numbers of model.c, as 794-902")
