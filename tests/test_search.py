"""The joint architecture + schedule search: its cheap evaluator against the imported models, determinism,
the board's limits, the spec files it writes, and the CLI's errors."""

from __future__ import annotations

import json
import random
import sys
from dataclasses import replace

import pytest
from microtvm_projects.boards import get_board
from tvm import relax

from tvm_patch import cli, report, zoo
from tvm_patch.export.prefold import prefold_constants
from tvm_patch.frontend import load
from tvm_patch.graph import build_graph
from tvm_patch.patch.from_graph import stage_from_graph
from tvm_patch.patch.memory import patch_memory
from tvm_patch.profile import profile_layers
from tvm_patch.search import Schedule, evaluate, search, spec_graph, spec_stage
from tvm_patch.search.space import Genome, random_genome
from tvm_patch.split import valid_splits

TINY = dict(population=6, iterations=2)


def _rows(graph):
    return [(r.name, r.op, r.out_shape, r.bytes, r.macs, r.block) for r in profile_layers(graph)]


@pytest.mark.parametrize("name", ["mcunet-in0", "proxyless-w0.25-r112"])
def test_spec_graph_is_the_imported_graph(name):
    """The search's graph of a spec profiles like the imported ONNX model, layer by layer and patch by patch."""
    net = zoo.spec(name)
    mod = relax.transform.FoldConstant()(prefold_constants(load(f"zoo:{name}").mod))  # prefold: seconds less
    imported, ours = build_graph(mod), spec_graph(net)
    assert _rows(ours) == _rows(imported)
    for p in (2, 4):
        splits = valid_splits(imported, (p, p))
        assert splits == valid_splits(ours, (p, p))
        for n in splits[:12:3]:
            stage, _ = stage_from_graph(imported, n, mod["main"])
            assert patch_memory(ours, spec_stage(ours, n), n, (p, p)) == patch_memory(imported, stage, n, (p, p))


@pytest.fixture(scope="module")
def tiny_genome():
    g = random_genome(random.Random(5))
    return replace(g, resolution=96, width=0.5, split=4, patches=3)


def test_evaluate_matches_profile_of_the_written_spec(tiny_genome, tmp_path):
    """A spec written as zoo JSON loads as a model whose `tvm-patch profile` gives the evaluator's figures."""
    net = tiny_genome.spec()
    ev = evaluate(net, tiny_genome.schedule(), "f412")
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(zoo.to_config(net)))
    assert zoo.spec_file(path) == (net, False)
    result = report.profile(str(path), patches=3, split="block:4", tir=False)
    pb = result["patch_based"]
    assert (ev.activation_peak_bytes, ev.macs, ev.arch_macs) == (pb["peak_bytes"], pb["macs"],
                                                                 result["layer_by_layer"]["macs"])
    assert list(ev.patch_input_hw) == pb["patch_input_hw"]
    lbl = evaluate(net, Schedule(), "f412")
    assert lbl.activation_peak_bytes == result["layer_by_layer"]["peak_bytes"] and lbl.macs == ev.arch_macs
    b = get_board("f412")
    assert (ev.sram_limit, ev.flash_limit) == (b.sram_bytes, b.flash_bytes)
    assert ev.sram_bytes > ev.activation_peak_bytes and ev.flash_bytes > ev.weights_bytes


def test_search_repeats_with_its_seed_and_respects_the_board():
    a = search("f412", seed=3, progress=False, **TINY)
    b = search("f412", seed=3, progress=False, **TINY)
    c = search("f412", seed=4, progress=False, **TINY)
    keys = [(x.genome, x.score, x.evaluation) for x in a.population]
    assert keys == [(x.genome, x.score, x.evaluation) for x in b.population] and a.history == b.history
    assert keys != [(x.genome, x.score, x.evaluation) for x in c.population]
    assert len(a.history) == 3 and a.history == sorted(a.history)  # parents survive: the best never drops
    board = get_board("f412")
    for x in a.population + c.population:
        ev = evaluate(x.spec, x.genome.schedule(), "f412")
        assert ev == x.evaluation and ev.fits
        assert ev.sram_bytes <= board.sram_bytes and ev.flash_bytes <= board.flash_bytes
        assert x.score == zoo.macs(x.spec)


def test_cli_search_writes_zoo_specs(tmp_path, capsys):
    out = tmp_path / "s"
    assert cli.main(["search", "--board", "f746", "--seed", "1", "--population", "6", "--iterations", "1",
                     "--out", str(out)]) == 0
    text = capsys.readouterr().out
    summary = json.loads((out / "search.json").read_text())
    best = json.loads((out / "best.json").read_text())
    assert best == json.loads((out / "rank01.json").read_text())
    net, int8 = zoo.spec_file(out / "best.json")
    assert int8 and net.name == summary["top"][0]["name"] and f"{net.name}:" in text
    ev = summary["top"][0]["evaluation"]
    assert ev["fits"] and ev["sram_bytes"] <= ev["sram_limit"] and ev["latency_ms"] is None
    lat = summary["best_latency"]  # the cost model's prediction for the best architecture under its schedule
    assert lat["instructions"] > zoo.macs(net) and lat["latency_ms"] > 0 and "predicted" in text
    assert zoo.macs(net) == ev["arch_macs"] == summary["top"][0]["score"]
    sched = best["tvm_patch"]["schedule"]
    split = int(sched["split"][len("block:"):]) if sched["split"] else None
    assert evaluate(net, Schedule(split, sched["patches"] or 1, sched["halo"] or "recompute"), "f746").to_json() == ev


def test_user_proxy(tmp_path, monkeypatch):
    (tmp_path / "my_proxy.py").write_text(
        "def small(spec, evaluation):\n    return -evaluation.weights_bytes\n"
        "def bad(spec, evaluation):\n    return 'big'\n"
        "def stop(spec, evaluation):\n    raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r = search("f412", seed=0, proxy="my_proxy:small", progress=False, **TINY)
    assert r.proxy == "my_proxy:small"
    assert all(x.score == -x.evaluation.weights_bytes for x in r.population)
    assert [x.score for x in r.population] == sorted((x.score for x in r.population), reverse=True)
    r = search("f412", seed=0, proxy="my_proxy:stop", progress=False, **TINY)
    assert r.interrupted and not r.population
    assert cli.main(["search", "--board", "f412", "--proxy", "my_proxy:stop", "--out", str(tmp_path / "o")]) == 130
    assert not (tmp_path / "o").exists()


def test_interrupt_keeps_the_best_so_far(tmp_path, monkeypatch, capsys):
    """Ctrl-C after the first generation: the CLI writes the best so far and exits 130."""
    calls = {"n": 0}

    def proxy(spec, evaluation):
        calls["n"] += 1
        if calls["n"] > 8:
            raise KeyboardInterrupt
        return float(zoo.macs(spec))

    module = type(sys)("interrupting_proxy")
    module.proxy = proxy
    monkeypatch.setitem(sys.modules, "interrupting_proxy", module)
    out = tmp_path / "s"
    assert cli.main(["search", "--board", "h743", "--population", "6", "--iterations", "5",
                     "--proxy", "interrupting_proxy:proxy", "--out", str(out)]) == 130
    summary = json.loads((out / "search.json").read_text())
    assert summary["interrupted"] and summary["generations"] == 1 and (out / "best.json").is_file()
    assert "interrupted" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--board", "f999"], "unknown board 'f999'"),
    (["--board", "f412", "--max-sram", "1000"], "nothing in the search space fits f412"),
    (["--board", "f412", "--max-flash", "99999999"], "--max-flash 99999999: give 1..1048576 B"),
    (["--board", "f412", "--population", "2"], "a population of at least 4"),
    (["--board", "f412", "--proxy", "no_such_module_x:f"], "cannot import no_such_module_x"),
    (["--board", "f412", "--proxy", "json"], "give module:function"),
    (["--board", "f412", "--proxy", "json:no_such"], "json has no attribute 'no_such'"),
])
def test_cli_errors(argv, message, tmp_path, capsys):
    small = [] if "--population" in argv else ["--population", "6"]
    assert cli.main(["search", *argv, *small, "--iterations", "0", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]  # after tqdm's cleared bar
    assert message in err and err.startswith("tvm-patch: error:")
    assert not (tmp_path / "o").exists()


def test_bad_proxy_value(tmp_path, monkeypatch, capsys):
    (tmp_path / "bad_proxy.py").write_text("def f(spec, evaluation):\n    return 'big'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.main(["search", "--board", "f412", "--proxy", "bad_proxy:f", "--population", "4", "--iterations",
                     "0", "--out", str(tmp_path / "o")]) == 2
    assert "returned 'big'" in capsys.readouterr().err


def test_spec_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"first_conv": 3')
    with pytest.raises(Exception, match="not valid JSON"):
        zoo.spec_file(bad)
    bad.write_text('{"blocks": []}')
    with pytest.raises(Exception, match="not a ProxylessNAS/MCUNet config"):
        zoo.spec_file(bad)
    cfg = zoo.to_config(Genome(96, 0.5, (2,) * 5, (3,) * 21, (3,) * 21, 0, 2, "recompute").spec(), {"variant": "int4"})
    bad.write_text(json.dumps(cfg))
    with pytest.raises(Exception, match="variant 'int4' is unknown"):
        zoo.spec_file(bad)


@pytest.mark.slow
def test_board_build_of_a_searched_spec(tmp_path, capsys):
    """`tvm-patch build DIR/best.json --board f412` builds the int8 firmware; the evaluator's weights are the
    export's, and its SRAM and Flash (with the reserves) are at least the linked firmware's (layer by layer,
    where the arena is the analytic peak)."""
    out = tmp_path / "s"
    assert cli.main(["search", "--board", "f412", "--seed", "2", "--population", "6", "--iterations", "1",
                     "--out", str(out)]) == 0
    best = json.loads((out / "best.json").read_text())["tvm_patch"]
    assert best["schedule"]["split"] is None  # layer by layer fits f412 at this seed: the cheapest plan
    capsys.readouterr()
    assert cli.main(["build", str(out / "best.json"), "--board", "f412", "-o", str(tmp_path / "fw"), "--json"]) == 0
    fw = json.loads(capsys.readouterr().out)
    ev = best["evaluation"]
    assert fw["fits"] and fw["export"]["weights_bytes"] == ev["weights_bytes"]
    assert fw["arena_bytes"] == ev["activation_peak_bytes"]
    assert fw["sram_bytes"] <= ev["sram_bytes"] and fw["flash_bytes"] <= ev["flash_bytes"]
