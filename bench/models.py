"""Which models a bench run measures: the defaults, the quick set, and turning a name or path into a model spec."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tvm_patch import zoo
from tvm_patch.paths import shared_models_dir

QUICK = ("vww", "kws", "mcunet-in0")
SUFFIXES = (".onnx", ".tflite")


class UnknownModel(ValueError):
    """A --models entry that is neither a zoo name nor an .onnx/.tflite file."""


@dataclass(frozen=True)
class Model:
    """A model to measure: its key in results.json, the spec the entry points take, and its zoo name if any."""

    key: str
    spec: str
    zoo_name: str | None

    @property
    def is_tflite(self) -> bool:
        """TFLite Micro's arena exists only for .tflite models."""
        return self.spec.endswith(".tflite")


def mlperf_models() -> dict[str, Path]:
    """The shared MLPerf Tiny .tflite files by stem (vww_96_int8, ...)."""
    return {p.stem: p for p in sorted((shared_models_dir() / "mlperf_tiny").glob("*.tflite"))}


def resolve(name: str) -> Model:
    """A zoo name (int8, as the board runs it), zoo:NAME[:int8], an MLPerf Tiny name (vww, kws, resnet8) or a path."""
    if name.startswith("zoo:"):
        base, _, variant = name[4:].partition(":")
        if base in zoo.names() and variant in ("", "int8"):
            return Model(base if variant else f"{base}-fp32", name, base)
        raise UnknownModel(f"unknown zoo model {name!r}; the zoo has {', '.join(zoo.names())}")
    if name in zoo.names():
        return Model(name, f"zoo:{name}:int8", name)
    mlperf = mlperf_models()
    for stem, path in mlperf.items():
        if name in (stem, stem.split("_")[0]):
            return Model(stem, str(path), None)
    path = Path(name)
    if path.suffix in SUFFIXES and path.is_file():
        return Model(path.stem, str(path.resolve()), None)
    if path.suffix in SUFFIXES:
        raise UnknownModel(f"model file {name} not found")
    raise UnknownModel(f"unknown model {name!r}: give a zoo name ({', '.join(zoo.names())}), "
                       f"an MLPerf Tiny name ({', '.join(s.split('_')[0] for s in mlperf)}) or an .onnx/.tflite path")


def default_models(quick: bool) -> list[Model]:
    """The quick set, or every MLPerf Tiny model and every zoo model."""
    names = QUICK if quick else (*mlperf_models(), *zoo.names())
    return [resolve(n) for n in names]
