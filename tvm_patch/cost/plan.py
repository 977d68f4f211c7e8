"""A schedule plan: where the patch stage ends, how many patches, how halos are handled; and the schedule
space the search enumerates (one home for the halo modes, so a new mode is one line here)."""

from __future__ import annotations

from dataclasses import dataclass

from tvm_patch.errors import TvmPatchError
from tvm_patch.names import HALO_MODES
MAX_PATCHES = 8  # rows and columns 1..8, as the issue asks


@dataclass(frozen=True)
class Plan:
    """Layer by layer (``split is None``) or the first ``split`` layers (a count, or "block:N" as the search's
    schedules give it) over ``patches`` = (rows, cols)."""

    split: int | str | None = None
    patches: tuple[int, int] | None = None
    halo: str = "recompute"

    def __post_init__(self) -> None:
        if (self.split is None) != (self.patches is None):
            raise TvmPatchError("a plan needs both a split and a patch count, or neither (layer by layer)")
        if self.halo not in HALO_MODES:
            raise TvmPatchError(f"unknown halo mode {self.halo!r}; this build has {', '.join(HALO_MODES)}")
        if self.patches is not None and self.patches[0] != self.patches[1]:
            raise TvmPatchError(f"patches {self.patches[0]}x{self.patches[1]}: the C export builds square "
                                "patch grids only; give rows == cols")

    @property
    def layer_by_layer(self) -> bool:
        return self.split is None

    def export_args(self) -> dict[str, int | str | None]:
        """The ``export_model`` keyword arguments of this plan."""
        return {"split": self.split, "patches": None if self.patches is None else self.patches[0], "halo": self.halo}

    def label(self) -> str:
        """Short text: ``layer-by-layer`` or ``split 6, 4x4, recompute``."""
        if self.layer_by_layer:
            return "layer-by-layer"
        return f"split {self.split}, {self.patches[0]}x{self.patches[1]}, {self.halo}"

    def to_json(self) -> dict:
        return {"split": self.split, "patches": list(self.patches) if self.patches else None, "halo": self.halo}
