"""meta_schedule's runners for tvm-patch candidates: measure a harness export on the emulator, the host,
a board, or a board/emulator of an RPC farm (TVM's tracker; ``tvm-patch rpc-server`` serves one board).

A candidate that fails (timeout, wrong output, a dead server) gives a ``RunnerResult`` with its one-line
error and no cost: meta_schedule logs and skips it. The cost stored in the database (``run_secs``) is the
runner's unit: instructions (emulator), cycles (device) or seconds (host).
"""

from __future__ import annotations

import functools
import io
import json
import socket
import tarfile
import tempfile
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import tvm
import tvm_ffi
from tvm import rpc
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture, RunnerInput, RunnerResult

from microtvm_projects.boards import get_board

from tvm_patch.errors import TvmPatchError
from tvm_patch.tune.builder import first_line
from tvm_patch.tune.measure import CandidateError, Measurement, measure_export

__all__ = ["MEASURE_FUNC", "HarnessRunner", "check_tracker", "local_measure", "register_measure", "rpc_key", "rpc_measure",
           "parse_address", "start_server"]

MEASURE_FUNC = "tvm_patch.tune.measure"
Measure = Callable[[Path, list[bytes]], Measurement]


def rpc_key(board: str, runner: str) -> str:
    """The tracker key of a server measuring on ``board`` with ``runner`` ("h743-emulator", "f412-device")."""
    return f"{board}-{runner}"


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); anything else is a one-line error."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TvmPatchError(f"--tracker {text!r}: give HOST:PORT, e.g. 127.0.0.1:9190")
    return host, int(port)


def local_measure(board: str, runner: str, timeout_sec: float, port: str | None = None,
                  probe: str | None = None) -> Measure:
    """Measure on this machine: the project goes beside the candidate's export (removed with it)."""

    def measure(export: Path, reference: list[bytes]) -> Measurement:
        return measure_export(export, export.parent, board, runner, reference, timeout_sec, port, probe)

    return measure


def rpc_measure(tracker: tuple[str, int], key: str, timeout_sec: float) -> Measure:
    """Measure on a server of ``tracker`` registered under ``key``: the export goes as a tar, the result
    comes back as JSON."""

    def measure(export: Path, reference: list[bytes]) -> Measurement:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(export, arcname="export")
        try:
            sess = _request_session(tracker, key, timeout_sec)
            sess.upload(bytearray(buf.getvalue()), "candidate.tar")
            answer = json.loads(sess.get_function(MEASURE_FUNC)(
                "candidate.tar", json.dumps({"reference": [r.hex() for r in reference], "timeout_sec": timeout_sec})))
        except (RuntimeError, OSError, ValueError) as e:  # TVM's errors (RPCError...) are RuntimeErrors
            raise CandidateError(f"RPC measurement through {tracker[0]}:{tracker[1]} key {key}: {first_line(e)}") from None
        if "error" in answer:
            raise CandidateError(answer["error"])
        return Measurement(answer["cost"], answer["unit"], [bytes.fromhex(o) for o in answer["outputs"]])

    return measure


def _request_session(tracker: tuple[str, int], key: str, timeout_sec: float) -> Any:
    """A session with a free server of ``key``; TVM's request waits for one without a timeout, so it runs in a
    daemon thread given ``timeout_sec``."""
    box: dict[str, Any] = {}

    def request() -> None:
        try:
            box["sess"] = rpc.connect_tracker(*tracker).request(key, priority=1, session_timeout=timeout_sec)
        except Exception as e:  # handed to the caller
            box["err"] = e

    t = threading.Thread(target=request, daemon=True, name="tvmp-rpc-request")
    t.start()
    t.join(timeout_sec)
    if t.is_alive():
        raise CandidateError(f"no {key} server of the tracker {tracker[0]}:{tracker[1]} became free within "
                             f"{timeout_sec:.0f} s")
    if "err" in box:
        raise box["err"]
    return box["sess"]


def check_tracker(tracker: tuple[str, int], key: str | None = None) -> None:
    """The tracker answers (and, given ``key``, has a server of that key): else a one-line error."""
    try:
        socket.create_connection(tracker, timeout=5.0).close()
    except OSError as e:
        raise TvmPatchError(f"cannot reach the tracker at {tracker[0]}:{tracker[1]} ({e.strerror or e}); start one "
                            "with `python -m tvm.exec.rpc_tracker --port PORT`") from None
    if key is None:
        return
    box: dict[str, Any] = {}
    def summary() -> None:
        try:
            box["info"] = rpc.connect_tracker(*tracker).summary()
        except Exception:  # no answer: reported below
            pass

    t = threading.Thread(target=summary, daemon=True, name="tvmp-rpc-summary")
    t.start()
    t.join(10.0)
    if "info" not in box:
        raise TvmPatchError(f"the tracker at {tracker[0]}:{tracker[1]} did not answer within 10 s; is it a TVM RPC "
                            "tracker?")
    if key not in box["info"].get("queue_info", {}):
        raise TvmPatchError(f"the tracker at {tracker[0]}:{tracker[1]} has no server with key {key}; start one with "
                            f"`tvm-patch rpc-server --tracker {tracker[0]}:{tracker[1]} --board BOARD --runner RUNNER`")


def register_measure(board: str, runner: str, port: str | None = None, probe: str | None = None) -> None:
    """The RPC server's side (``server_init_callback``): register ``MEASURE_FUNC``(tar name, options JSON)
    -> result JSON, measuring on ``board`` with ``runner`` (a board: on serial ``port``, flashed by ``probe``)."""

    def serve(tar_name: str, options: str) -> str:
        opts = json.loads(options)
        path = tvm.get_global_func("tvm.rpc.server.workpath")(tar_name)
        try:
            with tempfile.TemporaryDirectory(prefix="tvmp_rpc_") as tmp:
                work = Path(tmp)
                with tarfile.open(path) as tar:
                    tar.extractall(work, filter="data")
                m = measure_export(work / "export", work, board, runner,
                                   [bytes.fromhex(r) for r in opts["reference"]], float(opts["timeout_sec"]), port, probe)
            return json.dumps(m.to_json())
        except Exception as e:  # the client logs it as the candidate's failure
            return json.dumps({"error": e.one_line() if isinstance(e, TvmPatchError) else first_line(e)})

    tvm_ffi.register_global_func(MEASURE_FUNC, serve, override=True)


@derived_object
class _Done(PyRunnerFuture):
    def __init__(self, future: Future) -> None:
        super().__init__()
        self.future = future

    def done(self) -> bool:
        return self.future.done()

    def result(self) -> RunnerResult:
        return self.future.result()


@derived_object
class HarnessRunner(PyRunner):
    """Measures candidates with ``measure`` on ``parallel`` threads; ``references``: each kernel's outputs;
    once ``stopped()`` (Ctrl-C), candidates fail at once unmeasured."""

    def __init__(self, measure: Measure, references: Mapping[str, list[bytes]], parallel: int = 1,
                 stopped: Callable[[], bool] = lambda: False) -> None:
        super().__init__()
        self.measure = measure
        self.stopped = stopped
        self.references = dict(references)
        self.pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="tvmp-measure")

    def run(self, runner_inputs: list[RunnerInput]) -> list[PyRunnerFuture]:
        return [_Done(self.pool.submit(self._one, ri.artifact_path)) for ri in runner_inputs]

    def _one(self, artifact: str) -> RunnerResult:
        export = Path(artifact)
        if self.stopped():
            return RunnerResult(None, "interrupted (Ctrl-C): not measured")
        try:
            kernel = json.loads((export / "tvmp_export.json").read_text())["model"]
            m = self.measure(export, self.references[kernel])
            return RunnerResult([m.cost], None)
        except Exception as e:  # a failing candidate is logged and skipped, never stops the session
            return RunnerResult(None, e.one_line() if isinstance(e, TvmPatchError) else first_line(e))


def start_server(tracker: tuple[str, int], board: str, runner: str, host: str = "127.0.0.1", port: int = 9091,
                 port_end: int = 9199, serial: str | None = None, probe: str | None = None) -> rpc.Server:
    """An RPC server (TVM's, in its own process) registered with ``tracker`` under ``rpc_key(board, runner)``,
    serving ``MEASURE_FUNC`` on this machine's emulator or board. Stop it with ``.terminate()``."""
    get_board(board)
    if runner not in ("emulator", "device"):
        raise TvmPatchError(f"rpc-server --runner {runner!r}: use emulator or device")
    check_tracker(tracker)
    return rpc.Server(host=host, port=port, port_end=port_end, tracker_addr=tracker, key=rpc_key(board, runner),
                      silent=True, server_init_callback=functools.partial(register_measure, board, runner, serial, probe))
