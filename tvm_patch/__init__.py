"""tvm-patch: MCUNetV2-style patch-based inference for microcontrollers, built on TVM."""

__version__ = "0.1.0"
