"""Autotuning sessions with tvm.s_tir.meta_schedule (``tvm-patch tune``) and their records applied by
``tvm-patch build --tuning-db``: space.py (the knobs), harness.py (one kernel as an export), measure.py
(emulator, host, board), builder.py / runners.py (meta_schedule's PyBuilder / PyRunner, the RPC farm),
records.py (the JSON database), session.py (the session). See docs/tuning.md."""

from tvm_patch.tune.measure import RUNNERS, CandidateError
from tvm_patch.tune.records import TunedKernels, open_database, tuned_kernels
from tvm_patch.tune.runners import parse_address, start_server
from tvm_patch.tune.session import TuneSummary, tune_model

__all__ = ["RUNNERS", "CandidateError", "TuneSummary", "TunedKernels", "open_database", "parse_address",
           "start_server", "tune_model", "tuned_kernels"]
