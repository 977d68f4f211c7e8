"""The host parser of the firmware's line protocol v1 (microtvm_projects/protocol.py, docs/protocol.md)."""

from __future__ import annotations

import zlib

import pytest

from microtvm_projects.errors import ProjectError, ProtocolError
from microtvm_projects.protocol import (
    DeviceFaultError,
    KernelCount,
    RunRecord,
    SessionParser,
    SessionTimeoutError,
    read_session,
)

OUT0 = bytes(range(256))[::-1][:70]  # 70 bytes: three DATA lines of 32, 32 and 6 bytes
OUT1 = bytes([0x80, 0x7F, 0x00, 0xFF])
MODEL = "0123456789abcdef"
BEGIN = f"TVMP1 BEGIN board=f746 runner=device model={MODEL} arena=123456 opt=O3"


def crc(data: bytes) -> str:
    return f"{zlib.crc32(data):08x}"


def data_lines(index: int, data: bytes, step: int = 32) -> list[str]:
    return [f"TVMP1 DATA index={index} offset={o} hex={data[o:o + step].hex()}" for o in range(0, len(data), step)]


def good_session() -> list[str]:
    return [
        BEGIN,
        "TVMP1 KERNEL index=0 name=fused_conv2d_add_clip count=12345",
        "TVMP1 KERNEL index=1 name=fused_dwconv_3 count=678",
        "TVMP1 KERNEL index=2 name=_avgpool count=9",
        "TVMP1 TOTAL unit=cycles count=13032",
        "TVMP1 STACK used=1024 size=8192",
        f"TVMP1 OUTPUT index=0 bytes={len(OUT0)} crc32={crc(OUT0)}",
        *data_lines(0, OUT0),
        f"TVMP1 OUTPUT index=1 bytes={len(OUT1)} crc32={crc(OUT1)}",
        *data_lines(1, OUT1),
        "TVMP1 END status=0",
    ]


EXPECTED = RunRecord(
    board="f746", runner="device", model=MODEL, arena_bytes=123456, opt="O3", unit="cycles", count=13032,
    kernels=[KernelCount(0, "fused_conv2d_add_clip", 12345), KernelCount(1, "fused_dwconv_3", 678),
             KernelCount(2, "_avgpool", 9)],
    stack_used_bytes=1024, stack_size_bytes=8192, outputs=[OUT0, OUT1], status=0, noise=[],
)


def feed_all(lines: list[str]) -> SessionParser:
    p = SessionParser()
    for line in lines:
        p.feed_line(line)
    return p


def test_good_session_gives_the_exact_record():
    p = SessionParser()
    lines = good_session()
    for line in lines[:-1]:
        assert p.feed_line(line) is False
        assert not p.done
    assert p.feed_line(lines[-1]) is True
    assert p.done and p.stage == "done"
    assert p.result() == EXPECTED


def test_noise_interleaved_is_kept_aside():
    lines = good_session()
    noisy = ["", "STM32 boot v1.0", "clock 216 MHz"] + lines[:3] + ["debug: x=3", "  "] + lines[3:]
    record = feed_all(noisy).result()
    assert record.noise == ["STM32 boot v1.0", "clock 216 MHz", "debug: x=3"]
    assert record.outputs == [OUT0, OUT1] and record.kernels == EXPECTED.kernels


def test_noise_keeps_the_last_twenty():
    p = feed_all([f"noise {i}" for i in range(30)] + good_session())
    assert p.result().noise == [f"noise {i}" for i in range(10, 30)]


def test_crlf_and_trailing_newline_are_tolerated():
    assert feed_all([ln + "\r\n" for ln in good_session()]).result() == EXPECTED
    assert feed_all([ln + "\r" for ln in good_session()]).result() == EXPECTED


@pytest.mark.parametrize("step", [1, 3, 7, 64, 4096])
def test_partial_lines_across_feed_bytes_chunks(step):
    data = ("\r\n".join(["boot banner"] + good_session()) + "\r\n").encode()
    p = SessionParser()
    done = []
    for i in range(0, len(data), step):
        done.append(p.feed_bytes(data[i:i + step]))
        if not done[-1] and i + step < len(data) and data[i + step - 1:i + step] != b"\n":
            assert p.stage == "mid-line"
    assert done[-1] is True and not any(done[:-1])
    record = p.result()
    assert record.outputs == [OUT0, OUT1] and record.noise == ["boot banner"]


def test_bytes_after_end_are_ignored():
    data = ("\n".join(good_session()) + "\nTVMP1 BEGIN garbage after the end\n").encode()
    p = SessionParser()
    assert p.feed_bytes(data) is True
    assert p.feed_line("TVMP1 BOGUS") is True
    assert p.result().outputs == [OUT0, OUT1]


def test_non_ascii_garbage_is_noise():
    p = SessionParser()
    p.feed_bytes(b"\xff\xfe\x00garbage\x81\n")
    p.feed_bytes(("\n".join(good_session()) + "\n").encode())
    record = p.result()
    assert len(record.noise) == 1 and "garbage" in record.noise[0]


def test_a_glitch_byte_before_begin_is_dropped():
    """A NUL or 0xFF on the UART at reset must not hide BEGIN."""
    lines = good_session()
    data = b"\x00\xff" + ("\n".join(lines) + "\n").encode()
    p = SessionParser()
    assert p.feed_bytes(data) is True
    assert p.result().outputs == [OUT0, OUT1]


def test_zero_kernels_and_emulator_instructions():
    lines = [
        f"TVMP1 BEGIN board=f412 runner=emulator model={MODEL.upper()} arena=0 opt=Ofast",
        "TVMP1 TOTAL unit=instructions count=99",
        "TVMP1 STACK used=0 size=0",
        "TVMP1 END status=0",
    ]
    record = feed_all(lines).result()
    assert (record.runner, record.unit, record.count, record.kernels, record.outputs) == (
        "emulator", "instructions", 99, [], [])


def test_unknown_extra_fields_are_ignored():
    lines = good_session()
    lines[0] += " build=42"
    assert feed_all(lines).result() == EXPECTED


# --- every rule broken once -------------------------------------------------------------------------------------

def replace(lines: list[str], old_prefix: str, new: str | list[str]) -> list[str]:
    i = next(k for k, ln in enumerate(lines) if ln.startswith(old_prefix))
    return lines[:i] + ([new] if isinstance(new, str) else new) + lines[i + 1:]


def broken(name: str) -> list[str]:
    g = good_session()
    bad_out0 = bytearray(OUT0)
    bad_out0[5] ^= 1
    return {
        "second_begin": g[:3] + ["boot banner again", BEGIN] + g[3:],
        "before_begin": ["TVMP1 TOTAL unit=cycles count=5"] + g,
        "unknown_tag": replace(g, "TVMP1 TOTAL", "TVMP1 TOTALLY unit=cycles count=5"),
        "lowercase_tag": replace(g, "TVMP1 TOTAL", "TVMP1 total unit=cycles count=5"),
        "empty_tag": replace(g, "TVMP1 TOTAL", "TVMP1 "),
        "missing_field": replace(g, "TVMP1 STACK", "TVMP1 STACK used=5"),
        "no_equals": replace(g, "TVMP1 STACK", "TVMP1 STACK used=5 size"),
        "repeated_field": replace(g, "TVMP1 STACK", "TVMP1 STACK used=5 used=6 size=7"),
        "not_int": replace(g, "TVMP1 TOTAL", "TVMP1 TOTAL unit=cycles count=12x"),
        "negative_int": replace(g, "TVMP1 STACK", "TVMP1 STACK used=-5 size=7"),
        "bad_unit": replace(g, "TVMP1 TOTAL", "TVMP1 TOTAL unit=ticks count=5"),
        "bad_runner": replace(g, "TVMP1 BEGIN", BEGIN.replace("runner=device", "runner=board")),
        "bad_opt": replace(g, "TVMP1 BEGIN", BEGIN.replace("opt=O3", "opt=O9")),
        "bad_model": replace(g, "TVMP1 BEGIN", BEGIN.replace(MODEL, "xyz")),
        "bad_name": replace(g, "TVMP1 KERNEL index=1", "TVMP1 KERNEL index=1 name=9conv count=5"),
        "kernel_order": replace(g, "TVMP1 KERNEL index=1", "TVMP1 KERNEL index=2 name=k count=5"),
        "bad_crc_field": replace(g, "TVMP1 OUTPUT index=1", f"TVMP1 OUTPUT index=1 bytes=4 crc32={crc(OUT1).upper()}Z"),
        "output_order": replace(g, "TVMP1 OUTPUT index=1", f"TVMP1 OUTPUT index=3 bytes=4 crc32={crc(OUT1)}"),
        "data_unannounced": replace(g, "TVMP1 OUTPUT index=1", ["TVMP1 DATA index=1 offset=0 hex=00"]),
        "data_out_of_order": [ln for ln in g if not ln.startswith("TVMP1 DATA index=0 offset=32")],
        "data_beyond": replace(g, "TVMP1 DATA index=1", f"TVMP1 DATA index=1 offset=0 hex={OUT1.hex()}aa"),
        "data_odd": replace(g, "TVMP1 DATA index=1", "TVMP1 DATA index=1 offset=0 hex=807"),
        "data_non_hex": replace(g, "TVMP1 DATA index=1", "TVMP1 DATA index=1 offset=0 hex=80zz"),
        "data_too_long": replace(g, "TVMP1 DATA index=1", "TVMP1 DATA index=1 offset=0 hex=" + "00" * 33),
        "incomplete": [ln for ln in g if not ln.startswith("TVMP1 DATA index=0 offset=64")],
        "crc": replace(g, "TVMP1 DATA index=0 offset=0", data_lines(0, bytes(bad_out0))[0]),
        "fault": g[:3] + ["TVMP1 FAULT kind=hardfault pc=0x0800abcd cfsr=0x00008200"],
        "bad_fault_kind": g[:3] + ["TVMP1 FAULT kind=oops pc=0x0800abcd cfsr=0x00008200"],
        "status": g[:-1] + ["ERROR: arena too small", "TVMP1 END status=3"],
        "status_not_int": g[:-1] + ["TVMP1 END status=ok"],
        "no_total": [ln for ln in g if not ln.startswith("TVMP1 TOTAL")],
        "no_stack": [ln for ln in g if not ln.startswith("TVMP1 STACK")],
        "second_total": replace(g, "TVMP1 STACK", ["TVMP1 TOTAL unit=cycles count=5", g[5]]),
        "long_line": g[:2] + ["x" * 4097] + g[2:],
        "other_version": ["TVMP2 BEGIN board=f746"] + g,
    }[name]


RULES = {
    # name: words the one-line message must contain
    "second_begin": ["device reset during the run", "second BEGIN at line 5", "check power"],
    "before_begin": ["TOTAL line before BEGIN", "line 1", "run again"],
    "unknown_tag": ["unknown protocol tag", "'TOTALLY'", "line 5"],
    "lowercase_tag": ["unknown protocol tag", "'total'"],
    "empty_tag": ["unknown protocol tag"],
    "missing_field": ["STACK", "lacks field 'size'"],
    "no_equals": ["STACK", "key=value"],
    "repeated_field": ["STACK", "repeats field 'used'"],
    "not_int": ["TOTAL", "count='12x'", "not a non-negative integer"],
    "negative_int": ["STACK", "used='-5'", "integer"],
    "bad_unit": ["TOTAL", "unit='ticks'", "instructions|cycles"],
    "bad_runner": ["BEGIN", "runner='board'", "emulator|device"],
    "bad_opt": ["BEGIN", "opt='O9'"],
    "bad_model": ["BEGIN", "model='xyz'", "16 hex"],
    "bad_name": ["KERNEL", "name='9conv'", "C identifier"],
    "kernel_order": ["KERNEL index 2", "out of order", "expected 1"],
    "bad_crc_field": ["OUTPUT", "crc32=", "8 lowercase hex"],
    "output_order": ["OUTPUT index 3", "out of order", "expected 1"],
    "data_unannounced": ["DATA for output 1", "before its OUTPUT"],
    "data_out_of_order": ["DATA for output 0", "out of order", "offset 64, expected 32"],
    "data_beyond": ["DATA for output 1", "beyond its 4 bytes"],
    "data_odd": ["DATA for output 1", "odd number of hex chars"],
    "data_non_hex": ["DATA for output 1", "non-hex"],
    "data_too_long": ["DATA for output 1", "66 hex chars", "more than 64"],
    "incomplete": ["output 0 is incomplete at END", "64 of 70 bytes"],
    "crc": ["output 0 fails its checksum", crc(OUT0)],
    "fault": ["device faulted", "hardfault", "pc=0x0800abcd", "cfsr=0x00008200", "addr2line"],
    "bad_fault_kind": ["FAULT", "kind='oops'"],
    "status": ["END status=3", "after printing 'ERROR: arena too small'"],
    "status_not_int": ["END", "status='ok'", "not an integer"],
    "no_total": ["without a TOTAL"],
    "no_stack": ["without a STACK"],
    "second_total": ["second TOTAL"],
    "long_line": ["line 3", "longer than 4096"],
    "other_version": ["TVMP2", "TVMP1", "rebuild"],
}


@pytest.mark.parametrize("name", sorted(RULES))
def test_each_rule_broken_once_is_a_one_line_error(name):
    p = SessionParser()
    with pytest.raises(ProtocolError) as info:
        for line in broken(name):
            p.feed_line(line)
    err = info.value
    message = str(err)
    assert "\n" not in message and isinstance(err, ProjectError) and err.exit_code == 2
    assert ";" in message, message  # what happened; what to do
    for word in RULES[name]:
        assert word in message, (word, message)
    # the error is sticky: the parser refuses further input and has no result
    with pytest.raises(ProtocolError):
        p.feed_line("TVMP1 END status=0")
    with pytest.raises(ProtocolError):
        p.result()


def test_the_same_rules_through_feed_bytes():
    p = SessionParser()
    with pytest.raises(ProtocolError, match="device reset during the run"):
        p.feed_bytes(("\r\n".join(broken("second_begin")) + "\r\n").encode())


def test_fault_carries_kind_pc_cfsr():
    with pytest.raises(DeviceFaultError) as info:
        feed_all(broken("fault"))
    assert (info.value.kind, info.value.pc, info.value.cfsr) == ("hardfault", 0x0800ABCD, 0x8200)


def test_a_long_line_without_newline_fails_while_it_arrives():
    p = SessionParser()
    p.feed_bytes(b"a" * 4000)
    with pytest.raises(ProtocolError, match="longer than 4096 chars with no newline"):
        p.feed_bytes(b"b" * 200)


def test_a_line_of_exactly_4096_chars_is_accepted_as_noise():
    p = SessionParser()
    p.feed_bytes(b"n" * 4096 + b"\r\n")
    assert p.noise == ["n" * 4096]


def test_result_before_end_says_how_far_it_got():
    p = feed_all(good_session()[:4])
    with pytest.raises(ProtocolError, match=r"not complete .*after BEGIN, 4 protocol lines in"):
        p.result()


# --- read_session ------------------------------------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def chunked_reader(chunks: list[bytes], clock: FakeClock, step: float = 0.5):
    """A read_chunk that hands out `chunks` and then times out, advancing the fake clock like a real read."""
    asked = []

    def read(left: float) -> bytes:
        asked.append(left)
        assert left > 0
        if chunks:
            clock.now += 0.01
            return chunks.pop(0)
        clock.now += min(step, left)
        return b""

    return read, asked


def test_read_session_good_run():
    clock = FakeClock()
    data = ("\r\n".join(["boot"] + good_session()) + "\r\n").encode()
    read, asked = chunked_reader([data[i:i + 50] for i in range(0, len(data), 50)], clock)
    record = read_session(read, 5.0, clock=clock)
    assert record.outputs == [OUT0, OUT1] and record.noise == ["boot"]
    assert all(0 < a <= 5.0 for a in asked)


@pytest.mark.parametrize(
    "chunks, stage, words",
    [
        ([], "no BEGIN", ["within 10.0 s", "nothing received", "reset the board"]),
        ([b"boot banner\r\n"], "no BEGIN", ["no BEGIN seen", "last line 'boot banner'", "right port"]),
        ([(BEGIN + "\r\nTVMP1 KERNEL index=0 name=k count=1\r\n").encode()], "after BEGIN",
         ["after BEGIN, 2 protocol lines in", "last line 'TVMP1 KERNEL index=0 name=k count=1'", "hung mid-run"]),
        ([(BEGIN + "\r\nTVMP1 DA").encode()], "mid-line",
         ["after BEGIN, 1 protocol lines in", "stopped mid-line after 8 bytes of 'TVMP1 DA'"]),
        ([bytes([0x80 + i % 100 for i in range(300)])], "mid-line", ["no BEGIN seen", "garbled", "baud rate"]),
    ],
)
def test_read_session_timeout_says_how_far_it_got(chunks, stage, words):
    clock = FakeClock()
    read, asked = chunked_reader(list(chunks), clock)
    with pytest.raises(SessionTimeoutError) as info:
        read_session(read, 10.0, clock=clock)
    err = info.value
    assert err.stage == stage and 10.0 <= err.waited_sec < 10.6
    assert "\n" not in str(err)
    for word in words:
        assert word in str(err), (word, str(err))
    assert clock.now - 100.0 <= 10.6  # never read past the deadline
    assert all(0 < a <= 10.0 for a in asked)


def test_read_session_passes_parser_errors_through():
    clock = FakeClock()
    read, _ = chunked_reader([("\n".join(broken("fault")) + "\n").encode()], clock)
    with pytest.raises(DeviceFaultError):
        read_session(read, 10.0, clock=clock)


def test_the_example_in_the_docs_parses():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
    example = text.split("```")[1].strip().splitlines()
    record = feed_all(example).result()
    assert record.outputs == [bytes([1, 2, 3])] and record.noise == ["STM32F746 boot"]
