"""The project API: microTVM's interface (``server_info_query``, ``generate_project``, ``build``, ``flash``,
``open_transport``, ``read_transport``, ``write_transport``, ``close_transport``) over tvm-patch's board
projects, plus ``run``, which does one whole measured inference and checks it against the host build.

    api = ProjectAPI()
    api.generate_project("out/export", "out/f746", {"board": "f746"})
    api.build({"runner": "emulator"})
    report = api.run({"runner": "emulator"})      # RunReport: counts, stack, outputs, bit-exact

microTVM ran the project API as a server in the project directory and talked JSON-RPC to it; these projects
need no server, so the same methods are a Python class, and the CLI (`tvm-patch build --board`,
`tvm-patch run`) calls them.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from microtvm_projects import device, emulator, firmware, generate
from microtvm_projects.boards import Board, get_board
from microtvm_projects.errors import ProjectError, ProtocolError
from microtvm_projects.options import PROJECT_OPTIONS, resolve_options
from microtvm_projects.protocol import RunRecord, SessionParser, read_session

PLATFORM = "tvm-patch-stm32"


@dataclass
class RunReport:
    """One inference on the emulator or a board: what it cost and whether its outputs equal the host build's."""

    runner: str
    board: str
    instructions: int | None  # emulator: exact
    cycles: int | None  # device: DWT cycle counter
    est_cycles: int | None  # emulator: instructions x the core's documented CPI
    cpi: float | None
    latency_ms: float
    latency_estimated: bool
    stack_used_bytes: int
    bit_exact: bool
    mismatched_outputs: list[int]
    kernels: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.kernels:
            d.pop("kernels")
        return d


def report_from_record(record: RunRecord, board: Board, expected: list[bytes]) -> RunReport:
    """Turn a protocol session into a report: counts to latency at the board's clock, outputs against the
    host build's (``expected``)."""
    mismatched = [i for i, want in enumerate(expected) if i >= len(record.outputs) or record.outputs[i] != want]
    if len(record.outputs) != len(expected):
        mismatched += list(range(len(expected), len(record.outputs)))
    kernels = [{"index": k.index, "name": k.name, record.unit: k.count} for k in record.kernels]
    if record.unit == "instructions":
        est = round(record.count * board.qemu_cpi)
        return RunReport("emulator", board.key, record.count, None, est, board.qemu_cpi,
                         est / (board.mhz * 1e3), True, record.stack_used_bytes, not mismatched, mismatched, kernels)
    return RunReport("device", board.key, None, record.count, None, None, record.count / (board.mhz * 1e3), False,
                     record.stack_used_bytes, not mismatched, mismatched, kernels)


class ProjectAPI:
    """The board project API of one project directory (set by ``generate_project`` or given)."""

    def __init__(self, project_dir: str | os.PathLike | None = None) -> None:
        self.project_dir = Path(project_dir) if project_dir is not None else None
        self._transport: emulator.QemuTransport | device.SerialTransport | None = None

    # ------------------------------------------------------------------ microTVM's methods
    def server_info_query(self) -> dict[str, Any]:
        """The platform name, whether this is a template or a generated project, and the option records."""
        is_template = self.project_dir is None or not (self.project_dir / generate.PROJECT_JSON).is_file()
        return {"platform_name": PLATFORM, "is_template": is_template,
                "project_dir": None if self.project_dir is None else str(self.project_dir),
                "project_options": [o.to_json() for o in PROJECT_OPTIONS]}

    def generate_project(self, export_dir: str | os.PathLike, project_dir: str | os.PathLike,
                         options: dict[str, Any]) -> Path:
        """Write a board project for the export in ``export_dir`` (``tvm-patch build`` output)."""
        opts = resolve_options(options, "generate_project")
        self.project_dir = generate.generate_project(export_dir, project_dir, opts)
        return self.project_dir

    def build(self, options: dict[str, Any] | None = None) -> firmware.FirmwareBuild:
        """Compile and link the firmware for the runner (checked to fit the board) and measure it."""
        opts = resolve_options(options, "build")
        return firmware.build_firmware(self._dir(), opts["runner"], opts["profile"],
                                       options.get("opt") if options else None, opts["timeout_sec"])

    def flash(self, options: dict[str, Any] | None = None) -> str:
        """Device: write the firmware with openocd or pyocd. Emulator: nothing to write (QEMU loads the ELF)."""
        opts = resolve_options(options, "flash")
        if opts["runner"] == "emulator":
            return "qemu"
        return device.flash(self._elf(opts), self._board(), opts["probe"], opts["timeout_sec"])

    def open_transport(self, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Start the firmware's console: QEMU running the firmware, or the board's serial port."""
        opts = resolve_options(options, "open_transport")
        self.close_transport()
        if opts["runner"] == "emulator":
            t = emulator.QemuTransport()
            t.open(self._board(), self._elf(opts), self._project()["options"]["icount_shift"])
        else:
            t = device.SerialTransport()
            t.open(opts["port"] or device.find_port(), opts["baud"], timeout_sec=5.0)
        self._transport = t
        return {"timeouts": {"session_start_timeout_sec": opts["timeout_sec"]}}

    def read_transport(self, n: int, timeout_sec: float | None) -> bytes:
        """Up to ``n`` bytes of console output within ``timeout_sec`` (b"" when nothing came)."""
        return self._open_transport().read(n, 0.0 if timeout_sec is None else timeout_sec)

    def write_transport(self, data: bytes, timeout_sec: float | None) -> None:
        """Write to the console (the firmware reads nothing today; the emulator refuses)."""
        self._open_transport().write(data, 0.0 if timeout_sec is None else timeout_sec)

    def close_transport(self) -> None:
        """Stop QEMU or close the serial port; safe to call twice."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # ------------------------------------------------------------------ one measured inference
    def run(self, options: dict[str, Any] | None = None) -> RunReport:
        """Run the built firmware once (emulator or board), read its session, check it against the host build."""
        opts = resolve_options(options, "open_transport")
        board = self._board()
        if opts["runner"] == "device":
            record = device.run_on_device(self._elf(opts), board, opts["port"], opts["probe"], opts["baud"],
                                          opts["timeout_sec"])
        else:
            record = self._run_emulator(opts)
        return report_from_record(record, board, self.expected_outputs())

    def _run_emulator(self, opts: dict[str, Any]) -> RunRecord:
        self.open_transport(opts)
        t = self._transport
        assert isinstance(t, emulator.QemuTransport)

        def chunk(left: float) -> bytes:
            data = t.read(65536, min(left, 1.0))
            if not data and t.proc is not None and t.proc.poll() is not None:
                raise ProtocolError(f"QEMU exited with status {t.proc.returncode} before the firmware's END; "
                                    f"{parser.progress()}: run `{' '.join(t.command)}` to see it")
            return data

        parser = SessionParser()
        try:
            record = read_session(chunk, opts["timeout_sec"], parser=parser)
            code = t.exit_code()
        finally:
            self.close_transport()
        if record.runner != "emulator":
            raise ProtocolError("the emulator ran firmware built for a board; build with --runner emulator")
        if code not in (0, None):
            raise ProtocolError(f"QEMU exited with status {code} after the run; the firmware returned an error")
        return record

    def expected_outputs(self) -> list[bytes]:
        """The outputs of the host build on the project's input (written by ``generate_project``)."""
        outs = self._project()["outputs"]
        return [(self._dir() / "io" / f"expected{i}.bin").read_bytes() for i in range(len(outs))]

    # ------------------------------------------------------------------ helpers
    def _dir(self) -> Path:
        if self.project_dir is None:
            raise ProjectError("no project: call generate_project first or give the project directory")
        return self.project_dir

    def _project(self) -> dict[str, Any]:
        return firmware.load_project(self._dir())

    def _board(self) -> Board:
        return get_board(self._project()["board"])

    def _elf(self, opts: dict[str, Any]) -> Path:
        elf = self._dir() / "build" / (opts["runner"] + ("-profile" if opts["profile"] else "")) / "firmware.elf"
        if not elf.is_file():
            raise ProjectError(f"{elf}: not built; run `tvm-patch build ... --board` or the project's make first")
        return elf

    def _open_transport(self) -> emulator.QemuTransport | device.SerialTransport:
        if self._transport is None:
            raise ProjectError("no transport: call open_transport first")
        return self._transport
