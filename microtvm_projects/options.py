"""The project options, declared as records the way microTVM's project API declares them.

Each option says its type, its choices, its default, and which project-API methods read it, so a caller (the
CLI, a tuning session, a bench) can list and validate them without knowing the firmware.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from microtvm_projects.boards import BOARDS
from microtvm_projects.errors import ProjectError

OPT_LEVELS = ("O0", "O1", "O2", "O3", "Os", "Ofast")
RUNNERS = ("emulator", "device")
EMULATOR_MEMORY = ("board", "machine")


@dataclass(frozen=True)
class ProjectOption:
    """One option: its name, type ("str", "int", "float", "bool"), choices, default, help, and the methods
    that need it (``required``) or accept it (``optional``)."""

    name: str
    type: str
    help: str
    default: Any = None
    choices: tuple[Any, ...] | None = None
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The record as JSON (for ``server_info_query``)."""
        d = asdict(self)
        d["choices"] = list(self.choices) if self.choices is not None else None
        d["required"], d["optional"] = list(self.required), list(self.optional)
        return d


PROJECT_OPTIONS: tuple[ProjectOption, ...] = (
    ProjectOption("board", "str", "the target board", choices=tuple(BOARDS), required=("generate_project",)),
    ProjectOption("opt", "str", "arm-none-eabi-gcc optimisation level", default="O3", choices=OPT_LEVELS,
                  optional=("generate_project", "build")),
    ProjectOption("stack_bytes", "int", "stack reserved in SRAM (bytes; counted in the SRAM figure)",
                  default=8192, optional=("generate_project", "build")),
    ProjectOption("seed", "int", "seed of the input the firmware runs on (compiled into Flash)", default=0,
                  optional=("generate_project",)),
    ProjectOption("runner", "str", "emulator: QEMU with exact instruction counts; device: the board over its "
                  "probe and serial port", default="emulator", choices=RUNNERS,
                  optional=("build", "flash", "open_transport")),
    ProjectOption("emulator_memory", "str", "the emulator firmware's link: the board's Flash and SRAM sizes (board, "
                  "so that fitting means the same) or the QEMU machine's 4 MB + 4 MB (machine: a network too large "
                  "for the board still runs and is counted on its core; the report says it does not fit the board)",
                  default="board", choices=EMULATOR_MEMORY, optional=("generate_project",)),
    ProjectOption("profile", "bool", "count every kernel call (TVMP1 KERNEL lines)", default=False,
                  optional=("build", "flash", "open_transport")),
    ProjectOption("icount_shift", "int", "QEMU -icount shift: one instruction is 2^shift ns of emulated time "
                  "(>= 7 makes instruction counts exact)", default=7, optional=("generate_project", "open_transport")),
    ProjectOption("probe", "str", "flash tool (default: the first installed of openocd, pyocd)",
                  choices=("openocd", "pyocd"), optional=("flash",)),
    ProjectOption("port", "str", "serial port of the board (default: found by the ST-LINK's USB VID:PID)",
                  optional=("open_transport",)),
    ProjectOption("baud", "int", "serial baud rate (the firmware's console runs at 115200)", default=115200,
                  optional=("open_transport",)),
    ProjectOption("timeout_sec", "float", "longest wait for a build step, a flash or one run", default=600.0,
                  optional=("build", "flash", "open_transport")),
)
_BY_NAME = {o.name: o for o in PROJECT_OPTIONS}
_TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool}


def resolve_options(options: dict[str, Any] | None, method: str) -> dict[str, Any]:
    """``options`` checked for ``method`` and completed with defaults; a wrong one is a one-line error."""
    options = dict(options or {})
    for name, value in options.items():
        opt = _BY_NAME.get(name)
        if opt is None:
            raise ProjectError(f"unknown project option {name!r}; known: {', '.join(_BY_NAME)}")
        if value is None:
            continue
        want = _TYPES[opt.type]
        if not isinstance(value, want) or (opt.type == "int" and isinstance(value, bool)):
            raise ProjectError(f"project option {name}={value!r}: expected {opt.type}")
        if opt.choices is not None and value not in opt.choices:
            raise ProjectError(f"project option {name}={value!r}: choose one of {', '.join(map(str, opt.choices))}")
    for opt in PROJECT_OPTIONS:
        if method in opt.required and options.get(opt.name) is None:
            raise ProjectError(f"{method} needs the project option {opt.name!r} ({opt.help})")
        if options.get(opt.name) is None:
            options[opt.name] = opt.default
    if options["stack_bytes"] < 1024 or options["stack_bytes"] % 8:
        raise ProjectError(f"stack_bytes={options['stack_bytes']}: give a multiple of 8, at least 1024")
    if not 0 <= options["icount_shift"] <= 10:
        raise ProjectError(f"icount_shift={options['icount_shift']}: QEMU accepts 0..10")
    return options
