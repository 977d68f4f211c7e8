"""Static arena planner: one byte offset per buffer in one arena, for a whole network on a microcontroller.

The problem is offline dynamic storage allocation: every buffer has a size in bytes and a lifetime
``[first, last]`` (inclusive op steps); two buffers whose lifetimes share a step must not share memory,
unless an *alias hint* allows it. The planner runs several cheap heuristics (the greedy-by-size idea of
TensorFlow Lite Micro's greedy memory planner, TinyEngine's first fit in lifetime order, greedy by
breadth and greedy by conflict), adds an exact branch-and-bound search for small sets, and keeps the
smallest arena.

Alias hints (each one is permission, never an obligation; the planner uses it when it pays off):

* :class:`InPlace` ``(src, dst)``: ``dst`` may sit at exactly ``src``'s offset. For ops that read each
  element of ``src`` before they write the same element of ``dst`` and write nothing else (elementwise
  ops, a requantization, a residual add that writes into one of its inputs). Requires
  ``src.last == dst.first`` (the op is the last reader of ``src`` and the producer of ``dst``) and
  ``dst.size <= src.size`` (an op that writes more bytes per element than it reads, walking forward,
  would overwrite unread input).
* :class:`DepthwiseInPlace` ``(src, dst, shift=0)``: ``dst`` may start at ``offset(src) + shift`` and
  overlap ``src`` partially. The kernel model it stands for (TinyEngine's in-place depthwise
  convolution): NHWC depthwise layer, same channel count ``C`` and element size for input and output,
  computed one channel at a time: output channel ``c`` goes first to a one-channel scratch buffer
  (``Ho*Wo`` elements; the caller declares it as an ordinary :class:`Buffer` live at that step), then is
  copied to the output positions ``k*C + c``. With ``shift == 0`` these addresses are either channel-``c``
  positions of the input, which no later channel reads, or lie past the input's end: safe for any
  ``Ho*Wo`` (stride 1 or 2, padding). Other shifts are the caller's own proof. Requires
  ``src.last == dst.first``; ``shift`` must be a multiple of the alignment.

With either hint the pair may overlap in memory *only* at that exact relative placement; any other
placement must keep them disjoint. :func:`validate` checks exactly this.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Buffer",
    "Alias",
    "InPlace",
    "DepthwiseInPlace",
    "Plan",
    "InvalidPlanError",
    "plan_memory",
    "greedy_by_size",
    "first_fit_by_lifetime",
    "greedy_by_breadth",
    "greedy_by_conflict",
    "exact_search",
    "lower_bound",
    "max_live",
    "validate",
    "HEURISTICS",
]


@dataclass(frozen=True)
class Buffer:
    """One tensor to place: ``size`` bytes, live from op step ``first`` to ``last`` inclusive."""

    name: str
    size: int
    first: int
    last: int

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"buffer {self.name!r}: negative size {self.size}")
        if self.last < self.first:
            raise ValueError(f"buffer {self.name!r}: lifetime [{self.first}, {self.last}] is empty")

    def lives_with(self, other: Buffer) -> bool:
        """True when the two lifetimes share at least one step."""
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class Alias:
    """Permission for ``dst`` to start at ``offset(src) + shift`` although both are live at one step."""

    src: str
    dst: str
    shift: int = 0


@dataclass(frozen=True)
class InPlace(Alias):
    """``dst`` may reuse ``src``'s memory at the same offset (elementwise op, residual add into an input)."""

    def __init__(self, src: str, dst: str) -> None:
        super().__init__(src, dst, 0)


@dataclass(frozen=True)
class DepthwiseInPlace(Alias):
    """``dst`` may overlap ``src`` partially, starting ``shift`` bytes after it (channel-by-channel
    depthwise with a one-channel scratch; see the module docstring for the kernel model)."""


class InvalidPlanError(AssertionError):
    """A plan breaks an invariant (overlap of live buffers, alignment, arena bounds)."""


@dataclass(frozen=True)
class Plan:
    """The result: ``offsets[name]`` in bytes inside an arena of ``arena_size`` bytes.

    ``heuristic`` names the method that produced it; ``candidates`` gives each method's arena size;
    ``aliases`` lists the hints the plan actually uses (the driver must call those kernels in place);
    ``optimal`` is True when the arena equals the aligned lower bound or the exact search finished.
    """

    offsets: dict[str, int]
    arena_size: int
    alignment: int
    heuristic: str
    hints: tuple[Alias, ...] = ()
    aliases: tuple[Alias, ...] = ()
    candidates: dict[str, int] = field(default_factory=dict)
    optimal: bool = False


def _align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def _check_inputs(buffers: Sequence[Buffer], hints: Iterable[Alias], alignment: int) -> tuple[dict[str, Buffer], tuple[Alias, ...]]:
    if alignment <= 0:
        raise ValueError(f"alignment must be positive, got {alignment}")
    by_name: dict[str, Buffer] = {}
    for b in buffers:
        if b.name in by_name:
            raise ValueError(f"duplicate buffer name {b.name!r}")
        by_name[b.name] = b
    hints = tuple(hints)
    for h in hints:
        for n in (h.src, h.dst):
            if n not in by_name:
                raise ValueError(f"hint {h} names unknown buffer {n!r}")
        src, dst = by_name[h.src], by_name[h.dst]
        if h.src == h.dst:
            raise ValueError(f"hint {h} aliases a buffer with itself")
        if src.last != dst.first:
            raise ValueError(
                f"hint {h}: needs {h.src}.last == {h.dst}.first (the op that reads {h.src} last produces "
                f"{h.dst}), got {src.last} and {dst.first}"
            )
        if h.shift % alignment:
            raise ValueError(f"hint {h}: shift {h.shift} is not a multiple of the alignment {alignment}")
        if isinstance(h, InPlace) and dst.size > src.size:
            raise ValueError(f"in-place hint {h}: {h.dst} ({dst.size} B) is larger than {h.src} ({src.size} B)")
    return by_name, hints


def _overlap_len(a0: int, a1: int, b0: int, b1: int) -> int:
    return max(0, min(a1, b1) - max(a0, b0))


def lower_bound(buffers: Sequence[Buffer], hints: Iterable[Alias] = ()) -> int:
    """Bytes no valid plan can beat: the maximum over steps of the total size of the buffers live at
    that step, minus, for each hint whose two buffers are both live at that step, the bytes the hint
    lets them share at its fixed relative placement (so a used in-place pair counts once, as its
    larger member). Alignment padding is not counted."""
    buffers = list(buffers)
    if not buffers:
        return 0
    by_name = {b.name: b for b in buffers}
    steps = sorted({b.first for b in buffers})  # the live set only grows at a first step
    best = 0
    for s in steps:
        live = [b for b in buffers if b.first <= s <= b.last]
        total = sum(b.size for b in live)
        for h in hints:
            src, dst = by_name[h.src], by_name[h.dst]
            if src.first <= s <= src.last and dst.first <= s <= dst.last:
                total -= _overlap_len(0, src.size, h.shift, h.shift + dst.size)
        best = max(best, total)
    return best


def max_live(buffers: Sequence[Buffer]) -> int:
    """The most buffers live at one step (the count an alignment allowance of one padding per buffer uses)."""
    return max((sum(1 for b in buffers if b.first <= s <= b.last) for s in {b.first for b in buffers}), default=0)


def _permitted(hints: Sequence[Alias]) -> dict[tuple[str, str], int]:
    """(x, y) -> required offset(y) - offset(x) under which x and y may overlap."""
    rel: dict[tuple[str, str], int] = {}
    for h in hints:
        rel[(h.src, h.dst)] = h.shift
        rel[(h.dst, h.src)] = -h.shift
    return rel


class _Placer:
    """Incremental lowest-offset placement shared by all heuristics."""

    def __init__(self, by_name: dict[str, Buffer], hints: Sequence[Alias], alignment: int, prefer_alias: bool):
        self.by_name = by_name
        self.alignment = alignment
        self.prefer_alias = prefer_alias
        self.rel = _permitted(hints)
        self.partners: dict[str, list[str]] = {}
        for (x, y) in self.rel:
            self.partners.setdefault(x, []).append(y)
        self.offsets: dict[str, int] = {}
        self.top = 0

    def _conflicts(self, b: Buffer) -> list[Buffer]:
        return [self.by_name[n] for n in self.offsets if b.size and self.by_name[n].size and b.lives_with(self.by_name[n])]

    def _feasible(self, b: Buffer, off: int, conflicts: list[Buffer]) -> bool:
        for q in conflicts:
            qo = self.offsets[q.name]
            if _overlap_len(off, off + b.size, qo, qo + q.size):
                if self.rel.get((q.name, b.name)) != off - qo:
                    return False
        return True

    def lowest(self, b: Buffer) -> int:
        """Lowest aligned offset for ``b`` that conflicts with no placed buffer (alias positions allowed)."""
        if b.size == 0:
            return 0
        conflicts = self._conflicts(b)
        a = self.alignment
        # room below for an unplaced alias partner that must sit before b (a negative shift)
        cur = max([-self.rel[(b.name, p)] for p in self.partners.get(b.name, ())
                   if p not in self.offsets and self.rel[(b.name, p)] < 0], default=0)
        for q in sorted(conflicts, key=lambda q: self.offsets[q.name]):
            qo = self.offsets[q.name]
            if qo >= cur + b.size:
                break
            cur = max(cur, _align_up(qo + q.size, a))
        alias_pos = sorted(
            self.offsets[p] + self.rel[(p, b.name)]
            for p in self.partners.get(b.name, ())
            if p in self.offsets and self.by_name[p].size
        )
        feasible_alias = [x for x in alias_pos if x >= 0 and self._feasible(b, x, conflicts)]
        if feasible_alias and (self.prefer_alias or feasible_alias[0] < cur):
            return feasible_alias[0]
        return cur

    def place(self, b: Buffer, off: int | None = None) -> int:
        off = self.lowest(b) if off is None else off
        self.offsets[b.name] = off
        self.top = max(self.top, off + b.size)
        return off

    def unplace(self, name: str, old_top: int) -> None:
        del self.offsets[name]
        self.top = old_top


def _used_aliases(offsets: dict[str, int], by_name: dict[str, Buffer], hints: Sequence[Alias]) -> tuple[Alias, ...]:
    used = []
    for h in hints:
        s, d = by_name[h.src], by_name[h.dst]
        so, do = offsets[h.src], offsets[h.dst]
        if do - so == h.shift and _overlap_len(so, so + s.size, do, do + d.size):
            used.append(h)
    return tuple(used)


def _make_plan(name: str, offsets: dict[str, int], by_name: dict[str, Buffer], hints: tuple[Alias, ...], alignment: int) -> Plan:
    top = max((offsets[n] + b.size for n, b in by_name.items()), default=0)
    return Plan(
        offsets=dict(offsets),
        arena_size=_align_up(top, alignment),
        alignment=alignment,
        heuristic=name,
        hints=hints,
        aliases=_used_aliases(offsets, by_name, hints),
    )


def _by_order(name: str, order: Callable[[list[Buffer], dict[str, Buffer], tuple[Alias, ...]], list[Buffer]]):
    def heuristic(buffers: Sequence[Buffer], hints: Iterable[Alias] = (), alignment: int = 16, prefer_alias: bool = False) -> Plan:
        by_name, hints_t = _check_inputs(buffers, hints, alignment)
        placer = _Placer(by_name, hints_t, alignment, prefer_alias)
        for b in order(list(buffers), by_name, hints_t):
            placer.place(b)
        return _make_plan(name + ("+alias" if prefer_alias else ""), placer.offsets, by_name, hints_t, alignment)

    heuristic.__name__ = name
    return heuristic


def _order_by_size(bufs: list[Buffer], by_name: dict[str, Buffer], hints: tuple[Alias, ...]) -> list[Buffer]:
    return sorted(bufs, key=lambda b: (-b.size, b.first, b.name))


def _order_by_lifetime(bufs: list[Buffer], by_name: dict[str, Buffer], hints: tuple[Alias, ...]) -> list[Buffer]:
    return sorted(bufs, key=lambda b: (b.first, -b.size, b.name))


def _order_by_breadth(bufs: list[Buffer], by_name: dict[str, Buffer], hints: tuple[Alias, ...]) -> list[Buffer]:
    # Steps by their breadth (bytes live there), widest first; within a step, its buffers largest first.
    steps = sorted({s for b in bufs for s in (b.first, b.last)})
    breadth = {s: sum(b.size for b in bufs if b.first <= s <= b.last) for s in steps}
    seen: set[str] = set()
    out: list[Buffer] = []
    for s in sorted(steps, key=lambda s: (-breadth[s], s)):
        for b in sorted((b for b in bufs if b.first <= s <= b.last), key=lambda b: (-b.size, b.first, b.name)):
            if b.name not in seen:
                seen.add(b.name)
                out.append(b)
    return out


def _order_by_conflict(bufs: list[Buffer], by_name: dict[str, Buffer], hints: tuple[Alias, ...]) -> list[Buffer]:
    # Buffers that clash with the most bytes first: they are the hardest to fit later.
    weight = {b.name: sum(c.size for c in bufs if c is not b and b.lives_with(c)) for b in bufs}
    return sorted(bufs, key=lambda b: (-(weight[b.name] + b.size), -b.size, b.first, b.name))


greedy_by_size = _by_order("greedy_by_size", _order_by_size)
greedy_by_size.__doc__ = "TFLM-style: largest buffer first, each at the lowest offset free over its lifetime."
first_fit_by_lifetime = _by_order("first_fit_by_lifetime", _order_by_lifetime)
first_fit_by_lifetime.__doc__ = "TinyEngine-style: buffers in order of first use, each at the lowest free offset."
greedy_by_breadth = _by_order("greedy_by_breadth", _order_by_breadth)
greedy_by_breadth.__doc__ = "Widest op step first, its buffers largest first, each at the lowest free offset."
greedy_by_conflict = _by_order("greedy_by_conflict", _order_by_conflict)
greedy_by_conflict.__doc__ = "Buffers that overlap the most bytes in time first, each at the lowest free offset."

HEURISTICS: dict[str, Callable[..., Plan]] = {
    "greedy_by_size": greedy_by_size,
    "first_fit_by_lifetime": first_fit_by_lifetime,
    "greedy_by_breadth": greedy_by_breadth,
    "greedy_by_conflict": greedy_by_conflict,
}


def exact_search(
    buffers: Sequence[Buffer],
    hints: Iterable[Alias] = (),
    alignment: int = 16,
    upper: int | None = None,
    node_limit: int = 50_000,
    time_limit: float = 2.0,
) -> tuple[Plan | None, bool]:
    """Branch and bound over placement orders, each buffer at its lowest feasible offset.

    Without hints every plan can be compacted into such an order, so a finished search is optimal; with
    hints it is the best over those orders. Returns (plan or None if nothing beats ``upper``,
    finished) where ``finished`` is False when ``node_limit`` or ``time_limit`` cut the search short.
    """
    by_name, hints_t = _check_inputs(buffers, hints, alignment)
    bufs = sorted(buffers, key=lambda b: (-b.size, b.first, b.name))
    lb = _align_up(lower_bound(bufs, hints_t), alignment)
    best = [upper if upper is not None else None, None]  # [arena, offsets]
    placer = _Placer(by_name, hints_t, alignment, prefer_alias=False)
    nodes = [0]
    deadline = time.monotonic() + time_limit
    finished = [True]

    def dfs(remaining: list[Buffer]) -> bool:
        """Returns True when the search should stop (bound reached or budget spent)."""
        if not remaining:
            arena = _align_up(placer.top, alignment)
            if best[0] is None or arena < best[0]:
                best[0], best[1] = arena, dict(placer.offsets)
            return best[0] <= lb
        tried_sig: set[tuple[int, int, int, int]] = set()
        for i, b in enumerate(remaining):
            # Interchangeable buffers (same size and lifetime, no hints) need only one branch.
            sig = (b.size, b.first, b.last, hash(b.name) if b.name in placer.partners else 0)
            if sig in tried_sig:
                continue
            tried_sig.add(sig)
            nodes[0] += 1
            if nodes[0] > node_limit or (nodes[0] % 1024 == 0 and time.monotonic() > deadline):
                finished[0] = False
                return True
            old_top = placer.top
            off = placer.lowest(b)
            if best[0] is not None and _align_up(max(old_top, off + b.size), alignment) >= best[0]:
                continue
            placer.place(b, off)
            stop = dfs(remaining[:i] + remaining[i + 1 :])
            placer.unplace(b.name, old_top)
            if stop:
                return True
        return False

    dfs(bufs)
    if best[1] is None:
        return None, finished[0]
    plan = _make_plan("exact", best[1], by_name, hints_t, alignment)
    return plan, finished[0]


def plan_memory(
    buffers: Sequence[Buffer],
    hints: Iterable[Alias] = (),
    alignment: int = 16,
    exact_limit: int = 10,
    exact_node_limit: int = 50_000,
) -> Plan:
    """Run every heuristic (each with and without a preference for alias positions), then, for at
    most ``exact_limit`` buffers, the exact search; return the smallest arena (ties: first method)."""
    buffers = list(buffers)
    _, hints_t = _check_inputs(buffers, hints, alignment)
    candidates: dict[str, int] = {}
    best: Plan | None = None
    variants = (False, True) if hints_t else (False,)
    for name, fn in HEURISTICS.items():
        for prefer in variants:
            p = fn(buffers, hints_t, alignment, prefer_alias=prefer)
            candidates[p.heuristic] = p.arena_size
            if best is None or p.arena_size < best.arena_size:
                best = p
    assert best is not None
    lb = _align_up(lower_bound(buffers, hints_t), alignment)
    optimal = best.arena_size <= lb
    if not optimal and 0 < len(buffers) <= exact_limit:
        p, finished = exact_search(buffers, hints_t, alignment, upper=best.arena_size, node_limit=exact_node_limit)
        if p is not None:
            candidates["exact"] = p.arena_size
            best = p
        optimal = finished and not hints_t or (best.arena_size <= lb)
    return Plan(
        offsets=best.offsets,
        arena_size=best.arena_size,
        alignment=alignment,
        heuristic=best.heuristic,
        hints=hints_t,
        aliases=best.aliases,
        candidates=candidates,
        optimal=optimal,
    )


def validate(plan: Plan, buffers: Sequence[Buffer], hints: Iterable[Alias] | None = None) -> None:
    """Raise :class:`InvalidPlanError` unless every buffer has an aligned offset inside the arena and
    no two buffers live at a common step share a byte, except a hinted pair at its exact relative
    placement. ``hints`` defaults to the hints the plan was made with."""
    hints_t = plan.hints if hints is None else tuple(hints)
    rel = _permitted(hints_t)
    if plan.arena_size % plan.alignment:
        raise InvalidPlanError(f"arena size {plan.arena_size} is not a multiple of {plan.alignment}")
    for b in buffers:
        if b.name not in plan.offsets:
            raise InvalidPlanError(f"buffer {b.name!r} has no offset")
        off = plan.offsets[b.name]
        if off < 0 or off % plan.alignment:
            raise InvalidPlanError(f"buffer {b.name!r} at offset {off}: negative or not {plan.alignment}-aligned")
        if off + b.size > plan.arena_size:
            raise InvalidPlanError(f"buffer {b.name!r} [{off}, {off + b.size}) exceeds the arena ({plan.arena_size} B)")
    for a, b in itertools.combinations(buffers, 2):
        if not a.lives_with(b):
            continue
        ao, bo = plan.offsets[a.name], plan.offsets[b.name]
        if _overlap_len(ao, ao + a.size, bo, bo + b.size) and rel.get((a.name, b.name)) != bo - ao:
            raise InvalidPlanError(
                f"{a.name!r} [{ao}, {ao + a.size}) steps [{a.first}, {a.last}] overlaps {b.name!r} "
                f"[{bo}, {bo + b.size}) steps [{b.first}, {b.last}]"
            )
