"""The host side of the firmware's line protocol, version 1 (docs/protocol.md): an incremental parser.

The firmware prints ASCII lines ``TVMP1 <TAG> key=value ...``; every other line is noise (boot banners, debug
prints) that is kept aside for error messages. `SessionParser` takes lines or raw byte chunks as they arrive and
checks every rule of the protocol as it goes, so a reset mid-run, a torn or garbled line, a lost DATA line, a bad
checksum or a fault is one `ProtocolError` line saying what happened and what to do. `read_session` drives a
parser from any bounded read function (a serial port, a QEMU pipe) until END or an overall timeout.

Standalone: the standard library and this package only.
"""

from __future__ import annotations

import re
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, NoReturn

from microtvm_projects.errors import ProtocolError

PROTOCOL_VERSION = 1
PREFIX = "TVMP1 "
MAX_LINE_CHARS = 4096
NOISE_KEPT = 20
MAX_DATA_HEX_CHARS = 64

RUNNERS = ("emulator", "device")
OPT_LEVELS = ("O0", "O1", "O2", "O3", "Os", "Ofast")
UNITS = ("instructions", "cycles")
FAULT_KINDS = ("hardfault", "memmanage", "busfault", "usagefault")

_UINT = re.compile(r"[0-9]+")
_SINT = re.compile(r"-?[0-9]+")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BOARD = re.compile(r"[A-Za-z0-9_-]+")
_MODEL = re.compile(r"[0-9a-fA-F]{16}")
_CRC = re.compile(r"[0-9a-f]{8}")
_HEXWORD = re.compile(r"0x[0-9a-fA-F]{1,16}")
_HEXBYTES = re.compile(r"[0-9a-fA-F]*")
_OTHER_VERSION = re.compile(r"TVMP([0-9]+) ")

# What to do, appended to the messages of each kind of failure.
_GARBLED = "check the serial cable and baud rate, then run again"
_MISMATCH = "the line is garbled or the firmware is not from this tvm-patch: rebuild the project and run again"
_LOST = "a line was lost or garbled: check the serial cable and baud rate, then run again"


@dataclass(frozen=True)
class KernelCount:
    """The instructions or cycles of one kernel call (profile mode), so tuning and the cost model see each call."""

    index: int
    name: str
    count: int


@dataclass
class RunRecord:
    """Everything one firmware run reported: what ran, how long it took, its stack, and its output tensors."""

    board: str
    runner: str
    model: str
    arena_bytes: int
    opt: str
    unit: str
    count: int
    kernels: list[KernelCount]
    stack_used_bytes: int
    stack_size_bytes: int
    outputs: list[bytes]
    status: int
    noise: list[str] = field(default_factory=list)


class SessionTimeoutError(ProtocolError):
    """No END within the overall timeout; `stage` ("no BEGIN", "after BEGIN", "mid-line") tells how far the run got."""

    def __init__(self, message: str, stage: str, waited_sec: float, last_line: str | None):
        super().__init__(message)
        self.stage = stage
        self.waited_sec = waited_sec
        self.last_line = last_line


class DeviceFaultError(ProtocolError):
    """The firmware reported a Cortex-M fault; kind, pc and cfsr are kept so a caller can symbolize pc."""

    def __init__(self, message: str, kind: str, pc: int, cfsr: int):
        super().__init__(message)
        self.kind = kind
        self.pc = pc
        self.cfsr = cfsr


def show(line: str, limit: int = 80) -> str:
    """A line made safe for a one-line message (control bytes escaped, long lines cut), quoted."""
    out = []
    for ch in line:
        if ch == "\ufffd":
            out.append("?")
        elif ch.isprintable() and ord(ch) < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch) & 0xFF:02x}")
    text = "".join(out)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"'{text}'"


def _looks_garbled(text: str) -> bool:
    """True when a line is mostly bytes that are not printable ASCII (a wrong baud rate looks like this)."""
    if not text:
        return False
    bad = sum(1 for ch in text if ch == "\ufffd" or not (ch.isprintable() and ord(ch) < 0x7F))
    return bad * 4 >= len(text)


@dataclass
class _Output:
    size: int
    crc: int
    data: bytearray = field(default_factory=bytearray)


class SessionParser:
    """Checks and collects one firmware run's protocol lines, fed line by line or as raw byte chunks."""

    def __init__(self) -> None:
        self._line_no = 0
        self._partial = bytearray()
        self._noise: deque[str] = deque(maxlen=NOISE_KEPT)
        self._begin: dict[str, str] | None = None
        self._total: tuple[str, int] | None = None
        self._stack: tuple[int, int] | None = None
        self._kernels: list[KernelCount] = []
        self._outputs: list[_Output] = []
        self._status: int | None = None
        self._protocol_lines = 0
        self._last_protocol: str | None = None
        self._last_line: str | None = None
        self._error: ProtocolError | None = None
        self._bytes_seen = 0

    # -- state -----------------------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True once a valid END was parsed: the run is complete and `result()` may be called."""
        return self._status is not None

    @property
    def stage(self) -> str:
        """How far the run got: "no BEGIN", "after BEGIN", "mid-line" (an unfinished line is buffered) or "done"."""
        if self.done:
            return "done"
        if self._partial:
            return "mid-line"
        return "after BEGIN" if self._begin is not None else "no BEGIN"

    @property
    def began(self) -> bool:
        """True once BEGIN was parsed: the firmware started this run."""
        return self._begin is not None

    @property
    def noise(self) -> list[str]:
        """The last non-protocol lines (at most NOISE_KEPT), oldest first."""
        return list(self._noise)

    @property
    def last_line(self) -> str | None:
        """The last non-empty line received (protocol or noise), or the unfinished one if that came later."""
        if self._partial:
            return self._partial.decode("ascii", errors="replace")
        return self._last_line

    def progress(self) -> str:
        """One clause saying how far the run got, for timeout and incomplete-run messages."""
        if self._bytes_seen == 0 and self._line_no == 0:
            return "nothing received from the device"
        parts = []
        if self._begin is None:
            parts.append("no BEGIN seen")
        else:
            parts.append(f"after BEGIN, {self._protocol_lines} protocol lines in")
        if self._partial:
            text = self._partial.decode("ascii", errors="replace")
            parts.append(f"stopped mid-line after {len(self._partial)} bytes of {show(text)}")
        elif self._last_line is not None:
            parts.append(f"last line {show(self._last_line)}")
        return ", ".join(parts)

    # -- feeding ---------------------------------------------------------------------------------------------

    def feed_bytes(self, data: bytes) -> bool:
        """Feed a raw chunk (split on \\n, partial lines buffered); returns `done`. Lines after END are ignored."""
        if self._error is not None:
            raise self._error
        if self.done or not data:
            return self.done
        self._bytes_seen += len(data)
        start = 0
        while not self.done:
            nl = data.find(b"\n", start)
            if nl < 0:
                self._partial += data[start:]
                if len(self._partial) > MAX_LINE_CHARS + 1:  # +1: a trailing \r still to come is tolerated
                    self._fail(
                        f"line {self._line_no + 1} is longer than {MAX_LINE_CHARS} chars with no newline "
                        f"({len(self._partial)} bytes so far, starting {show(self.last_line or '')}); "
                        f"the serial output is garbled: {_GARBLED}"
                    )
                break
            chunk = bytes(self._partial) + data[start:nl]
            self._partial.clear()
            start = nl + 1
            self.feed_line(chunk.decode("ascii", errors="replace"))
        return self.done

    def feed_line(self, line: str) -> bool:
        """Feed one line (without or with its "\\n"; a trailing "\\r" is tolerated); returns `done`."""
        if self._error is not None:
            raise self._error
        if self.done:
            return True
        self._line_no += 1
        if line.endswith("\n"):
            line = line[:-1]
        if line.endswith("\r"):
            line = line[:-1]
        if len(line) > MAX_LINE_CHARS:
            self._fail(
                f"line {self._line_no} is {len(line)} chars, longer than {MAX_LINE_CHARS} "
                f"(starting {show(line)}); the serial output is garbled: {_GARBLED}"
            )
        # A UART glitch at reset can put a NUL or a stray byte before the first line: drop leading non-printables.
        body = line.lstrip("".join(chr(c) for c in range(0x20)) + "\x7f\ufffd")
        if not body.strip():
            return False
        self._last_line = body
        if not body.startswith(PREFIX):
            other = _OTHER_VERSION.match(body)
            if other and other.group(1) != str(PROTOCOL_VERSION):
                self._fail(
                    f"the firmware speaks protocol TVMP{other.group(1)} (line {self._line_no}), this tvm-patch "
                    f"reads TVMP{PROTOCOL_VERSION}; rebuild the project with this tvm-patch and flash it again"
                )
            self._noise.append(body)
            return False
        self._protocol_lines += 1
        self._last_protocol = body
        try:
            self._protocol_line(body)
        except ProtocolError as err:
            self._error = err
            raise
        return self.done

    def result(self) -> RunRecord:
        """The run's record once END was seen; before that a ProtocolError saying how far the run got."""
        if self._error is not None:
            raise self._error
        if not self.done or self._begin is None or self._total is None or self._stack is None:
            raise ProtocolError(f"the run is not complete (no END yet: {self.progress()}); run again")
        b = self._begin
        return RunRecord(
            board=b["board"], runner=b["runner"], model=b["model"], arena_bytes=int(b["arena"]), opt=b["opt"],
            unit=self._total[0], count=self._total[1], kernels=list(self._kernels),
            stack_used_bytes=self._stack[0], stack_size_bytes=self._stack[1],
            outputs=[bytes(o.data) for o in self._outputs], status=self._status, noise=self.noise,
        )

    # -- rules -----------------------------------------------------------------------------------------------

    def _fail(self, message: str, error: ProtocolError | None = None) -> NoReturn:
        err = error if error is not None else ProtocolError(message)
        self._error = err
        raise err

    def _fields(self, tag: str, rest: list[str], wanted: tuple[str, ...]) -> dict[str, str]:
        where = f"TVMP1 {tag} at line {self._line_no}"
        got: dict[str, str] = {}
        for token in rest:
            key, eq, value = token.partition("=")
            if not eq or not key:
                self._fail(f"{where} has a field without key=value ({show(token, 40)}); {_MISMATCH}")
            if key in got:
                self._fail(f"{where} repeats field '{key}'; {_MISMATCH}")
            got[key] = value
        for key in wanted:
            if key not in got:
                self._fail(f"{where} lacks field '{key}'; {_MISMATCH}")
            if got[key] == "":
                self._fail(f"{where} has an empty field '{key}'; {_MISMATCH}")
        return got  # fields a v1 parser does not know are ignored (see docs/protocol.md)

    def _int(self, tag: str, f: dict[str, str], key: str, signed: bool = False) -> int:
        value = f[key]
        if not (_SINT if signed else _UINT).fullmatch(value):
            kind = "an integer" if signed else "a non-negative integer"
            self._fail(f"TVMP1 {tag} at line {self._line_no}: field {key}={show(value, 30)} is not {kind}; {_MISMATCH}")
        return int(value)

    def _match(self, tag: str, f: dict[str, str], key: str, pattern: re.Pattern[str], what: str) -> str:
        value = f[key]
        if not pattern.fullmatch(value):
            self._fail(
                f"TVMP1 {tag} at line {self._line_no}: field {key}={show(value, 30)} is not {what}; {_MISMATCH}"
            )
        return value

    def _choice(self, tag: str, f: dict[str, str], key: str, choices: tuple[str, ...]) -> str:
        value = f[key]
        if value not in choices:
            self._fail(
                f"TVMP1 {tag} at line {self._line_no}: field {key}={show(value, 30)} is not one of "
                f"{'|'.join(choices)}; {_MISMATCH}"
            )
        return value

    def _protocol_line(self, body: str) -> None:
        tokens = body[len(PREFIX):].split()
        tag = tokens[0] if tokens else ""
        rest = tokens[1:]
        n = self._line_no
        handler = getattr(self, f"_tag_{tag}", None) if tag.isupper() and tag.isalpha() else None
        if handler is None:
            self._fail(f"unknown protocol tag {show(tag, 20)} at line {n} ({show(body)}); {_MISMATCH}")
        if tag == "BEGIN":
            if self._begin is not None:
                self._fail(
                    f"device reset during the run (a second BEGIN at line {n}); "
                    f"check power and the reset line, then run again"
                )
        elif self._begin is None:
            self._fail(
                f"a {tag} line before BEGIN at line {n}: the run's start was lost (the port opened mid-run or "
                f"a line was garbled); reset the board and run again"
            )
        handler(tag, rest)

    def _tag_BEGIN(self, tag: str, rest: list[str]) -> None:
        f = self._fields(tag, rest, ("board", "runner", "model", "arena", "opt"))
        self._match(tag, f, "board", _BOARD, "a board key")
        self._choice(tag, f, "runner", RUNNERS)
        self._match(tag, f, "model", _MODEL, "16 hex chars")
        self._int(tag, f, "arena")
        self._choice(tag, f, "opt", OPT_LEVELS)
        self._begin = f

    def _tag_KERNEL(self, tag: str, rest: list[str]) -> None:
        f = self._fields(tag, rest, ("index", "name", "count"))
        index = self._int(tag, f, "index")
        name = self._match(tag, f, "name", _IDENT, "a C identifier")
        count = self._int(tag, f, "count")
        if index != len(self._kernels):
            self._fail(
                f"KERNEL index {index} at line {self._line_no} out of order (expected {len(self._kernels)}); {_LOST}"
            )
        self._kernels.append(KernelCount(index, name, count))

    def _tag_TOTAL(self, tag: str, rest: list[str]) -> None:
        f = self._fields(tag, rest, ("unit", "count"))
        unit = self._choice(tag, f, "unit", UNITS)
        count = self._int(tag, f, "count")
        if self._total is not None:
            self._fail(f"a second TOTAL at line {self._line_no}; {_MISMATCH}")
        self._total = (unit, count)

    def _tag_STACK(self, tag: str, rest: list[str]) -> None:
        f = self._fields(tag, rest, ("used", "size"))
        used = self._int(tag, f, "used")
        size = self._int(tag, f, "size")
        if self._stack is not None:
            self._fail(f"a second STACK at line {self._line_no}; {_MISMATCH}")
        self._stack = (used, size)

    def _tag_OUTPUT(self, tag: str, rest: list[str]) -> None:
        f = self._fields(tag, rest, ("index", "bytes", "crc32"))
        index = self._int(tag, f, "index")
        size = self._int(tag, f, "bytes")
        crc = int(self._match(tag, f, "crc32", _CRC, "8 lowercase hex chars"), 16)
        if index != len(self._outputs):
            self._fail(
                f"OUTPUT index {index} at line {self._line_no} out of order (expected {len(self._outputs)}); {_LOST}"
            )
        self._outputs.append(_Output(size, crc))

    def _tag_DATA(self, tag: str, rest: list[str]) -> None:
        f = self._fields(tag, rest, ("index", "offset", "hex"))
        index = self._int(tag, f, "index")
        offset = self._int(tag, f, "offset")
        text = f["hex"]
        n = self._line_no
        if index >= len(self._outputs):
            self._fail(f"DATA for output {index} at line {n} before its OUTPUT line; {_LOST}")
        if not _HEXBYTES.fullmatch(text):
            self._fail(f"DATA for output {index} at line {n} has non-hex chars in hex={show(text, 40)}; {_GARBLED}")
        if len(text) % 2:
            self._fail(f"DATA for output {index} at line {n} has an odd number of hex chars ({len(text)}); {_GARBLED}")
        if len(text) > MAX_DATA_HEX_CHARS:
            self._fail(
                f"DATA for output {index} at line {n} has {len(text)} hex chars, more than {MAX_DATA_HEX_CHARS}; "
                f"{_MISMATCH}"
            )
        out = self._outputs[index]
        if offset != len(out.data):
            self._fail(
                f"DATA for output {index} at line {n} out of order: offset {offset}, expected {len(out.data)}; {_LOST}"
            )
        chunk = bytes.fromhex(text)
        if offset + len(chunk) > out.size:
            self._fail(
                f"DATA for output {index} at line {n} goes beyond its {out.size} bytes "
                f"(offset {offset} + {len(chunk)}); {_LOST}"
            )
        out.data += chunk

    def _tag_FAULT(self, tag: str, rest: list[str]) -> None:
        f = self._fields(tag, rest, ("kind", "pc", "cfsr"))
        kind = self._choice(tag, f, "kind", FAULT_KINDS)
        pc = int(self._match(tag, f, "pc", _HEXWORD, "0x<hex>"), 16)
        cfsr = int(self._match(tag, f, "cfsr", _HEXWORD, "0x<hex>"), 16)
        message = (
            f"the device faulted: {kind} at pc=0x{pc:08x} cfsr=0x{cfsr:08x} (line {self._line_no}); "
            f"find the code with arm-none-eabi-addr2line -e <elf> 0x{pc:08x}, fix the firmware and run again"
        )
        self._fail(message, DeviceFaultError(message, kind, pc, cfsr))

    def _tag_END(self, tag: str, rest: list[str]) -> None:
        f = self._fields(tag, rest, ("status",))
        status = self._int(tag, f, "status", signed=True)
        n = self._line_no
        if status != 0:
            said = f", after printing {show(self._noise[-1])}" if self._noise else ", with no message"
            self._fail(
                f"the firmware reported failure (END status={status} at line {n}{said}); fix the cause it printed "
                f"(docs/protocol.md lists the statuses) and run again"
            )
        if self._total is None:
            self._fail(f"END at line {n} without a TOTAL line; {_MISMATCH}")
        if self._stack is None:
            self._fail(f"END at line {n} without a STACK line; {_MISMATCH}")
        for i, out in enumerate(self._outputs):
            if len(out.data) != out.size:
                self._fail(
                    f"output {i} is incomplete at END (line {n}): {len(out.data)} of {out.size} bytes received; {_LOST}"
                )
            got = zlib.crc32(bytes(out.data))
            if got != out.crc:
                self._fail(
                    f"output {i} fails its checksum at END (line {n}): crc32 {out.crc:08x} announced, {got:08x} "
                    f"received; the serial link corrupted data: {_GARBLED}"
                )
        self._status = status


def read_session(
    read_chunk: Callable[[float], bytes],
    timeout_sec: float,
    clock: Callable[[], float] = time.monotonic,
    parser: SessionParser | None = None,
) -> RunRecord:
    """Read one run through `read_chunk(seconds_left)` (b"" on its own timeout) until END, bounded by `timeout_sec`."""
    parser = parser if parser is not None else SessionParser()
    start = clock()
    deadline = start + timeout_sec
    while not parser.done:
        remaining = deadline - clock()
        if remaining <= 0:
            waited = clock() - start
            stage = parser.stage
            hint = (
                "the output looks garbled: check the baud rate and the serial cable"
                if _looks_garbled(parser.last_line or "")
                else "check that the firmware was flashed and started (reset the board) and that the right port is read"
                if not parser.began
                else "the firmware stopped or hung mid-run (on a board: check power), then run again"
            )
            raise SessionTimeoutError(
                f"no END from the device within {waited:.1f} s ({parser.progress()}); {hint}",
                stage, waited, parser.last_line,
            )
        data = read_chunk(remaining)
        if data:
            parser.feed_bytes(data)
    return parser.result()
