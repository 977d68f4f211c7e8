"""The `tvm-patch` command line: zoo, profile (and, as they land, verify and build).

Bad input is reported as one line on stderr with exit code 2; set TVM_PATCH_DEBUG=1 for tracebacks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from tvm_patch.errors import TvmPatchError

PROG = "tvm-patch"


def _cmd_zoo(args: argparse.Namespace) -> int:
    from tvm_patch import zoo

    if args.export:
        if not args.output:
            raise TvmPatchError("zoo --export NAME needs -o FILE.onnx")
        proto = zoo.onnx_model(args.export, int8=args.int8)
        _write_bytes(args.output, proto.SerializeToString())
        print(f"wrote {args.output}")
        return 0
    for name in zoo.names():
        print(f"{name:24s} {zoo.describe(name)}")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from tvm_patch import report

    result = report.profile(args.model)
    if args.plot:
        from tvm_patch.plot import plot_profile

        plot_profile(result, args.plot)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(report.format_profile(result))
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0


def _write_bytes(path: str, data: bytes) -> None:
    """Write a file atomically; an unwritable place is a one-line error."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise TvmPatchError(f"{path}: cannot write ({e.strerror}); choose a writable path") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and the tests)."""
    p = argparse.ArgumentParser(prog=PROG, description="MCUNetV2 patch-based inference for microcontrollers, on TVM.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    z = sub.add_parser("zoo", help="list the model zoo (MODEL arguments accept zoo:NAME and zoo:NAME:int8)")
    z.add_argument("--export", metavar="NAME", help="write the zoo model NAME as ONNX to -o FILE")
    z.add_argument("--int8", action="store_true", help="with --export: the int8 QDQ model")
    z.add_argument("-o", "--output", metavar="FILE")
    z.set_defaults(func=_cmd_zoo)

    pr = sub.add_parser("profile", help="per-layer analytic activation memory, MACs and receptive fields")
    pr.add_argument("model", help="an .onnx or .tflite file, or zoo:NAME[:int8]")
    pr.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    pr.add_argument("--plot", metavar="FILE.png", help="draw the per-layer memory bar chart (MCUNetV2 Fig. 1)")
    pr.set_defaults(func=_cmd_profile)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except TvmPatchError as e:
        if os.environ.get("TVM_PATCH_DEBUG"):
            raise
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
