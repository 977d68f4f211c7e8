"""The cost model and the schedule search (MCUNetV2 Sec. 3.2-3.3): a plan's firmware SRAM (exact) and Flash
from the export, its latency from a per-kernel XGBoost model trained on emulator measurements, and the
search over splits, patch counts and halo modes. It sits beside the flow and calls into it."""

from tvm_patch.cost.plan import HALO_MODES, Plan
from tvm_patch.cost.predict import Prediction, predict

__all__ = ["HALO_MODES", "Plan", "Prediction", "predict"]
