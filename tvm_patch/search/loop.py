"""The evolutionary search (MCUNetV2 Sec. 3.3; MCUNet's and Once-for-All's evolution): a population of
architectures with their schedules, each feasible on the board per `evaluate`, ranked by an accuracy proxy.

Every generation keeps the best quarter as parents and refills the population with mutated parents (half)
and crossovers of two parents (half); a child that does not fit, or whose schedule cannot run, is drawn again.
All randomness comes from one `random.Random(seed)`, and ties are broken by the genome's key, so a run repeats
exactly. Ctrl-C stops after the current evaluation; the result holds the best so far. At the end every
architecture of the population gets the best of all its schedules that fit (evolution only needs one).
"""

from __future__ import annotations

import importlib
import numbers
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from microtvm_projects.boards import get_board
from tqdm import tqdm

from tvm_patch.errors import TvmPatchError
from tvm_patch.names import HALO_MODES
from tvm_patch.search.evaluate import Evaluation, board_limits, evaluate
from tvm_patch.search.evolve import crossover, mutate
from tvm_patch.search.space import PATCHES, Genome, max_split, random_genome
from tvm_patch.zoo.spec import NetSpec, macs

Proxy = Callable[[NetSpec, Evaluation], float]

PARENT_SHARE = 0.25
MUTATE_SHARE = 0.5
MUTATE_PROB = 0.1
DRAWS_PER_SLOT = 50  # draws allowed per population slot before the space is declared infeasible


def macs_proxy(spec: NetSpec, evaluation: Evaluation) -> float:
    """The default accuracy proxy: the architecture's MACs (every output once; recomputed halos add nothing)."""
    return float(macs(spec))


def load_proxy(text: str | None) -> tuple[str, Proxy]:
    """(name, function) of `--proxy module:function`; None gives the MACs proxy."""
    if text is None:
        return "macs", macs_proxy
    module, _, func = text.partition(":")
    if not module or not func:
        raise TvmPatchError(f"--proxy {text!r}: give module:function, e.g. mypkg.proxies:accuracy")
    try:
        fn = getattr(importlib.import_module(module), func)
    except ImportError as e:
        raise TvmPatchError(f"--proxy {text!r}: cannot import {module} ({e}); is it on PYTHONPATH?") from None
    except AttributeError:
        raise TvmPatchError(f"--proxy {text!r}: {module} has no attribute {func!r}") from None
    if not callable(fn):
        raise TvmPatchError(f"--proxy {text!r}: {module}.{func} is not callable")
    return text, fn


@dataclass(frozen=True)
class Candidate:
    """An evaluated genome: its architecture, memory and compute, and its proxy score."""

    genome: Genome
    spec: NetSpec
    evaluation: Evaluation
    score: float

    def rank_key(self) -> tuple:
        """Best first: highest score, then fewest executed MACs, then the key (a deterministic tie-break)."""
        return (-self.score, self.evaluation.macs, self.genome.key)


@dataclass
class SearchResult:
    """The final (or interrupted) population, best first, and the best score of every finished generation."""

    board: str
    seed: int
    proxy: str
    population: list[Candidate]
    history: list[float] = field(default_factory=list)
    evaluated: int = 0
    interrupted: bool = False


class _Evaluator:
    """Scores genomes once each (a dict keyed by genome), None for those that do not fit or cannot run."""

    def __init__(self, board: str, limits: tuple[int, int], proxy: Proxy, proxy_name: str) -> None:
        self.board, self.limits, self.proxy, self.proxy_name = board, limits, proxy, proxy_name
        self.seen: dict[Genome, Candidate | None] = {}
        self.closest: Evaluation | None = None  # the smallest misfit, for the error when nothing fits

    def __call__(self, g: Genome) -> Candidate | None:
        if g not in self.seen:
            self.seen[g] = self._score(g)
        return self.seen[g]

    def _score(self, g: Genome) -> Candidate | None:
        spec = g.spec()
        try:
            ev = evaluate(spec, g.schedule(), self.board, self.limits)
        except TvmPatchError:
            return None  # a schedule this architecture cannot run
        if not ev.fits:
            if self.closest is None or _excess(ev) < _excess(self.closest):
                self.closest = ev
            return None
        score = self.proxy(spec, ev)
        if not isinstance(score, numbers.Real) or isinstance(score, bool) or score != score:
            raise TvmPatchError(f"--proxy {self.proxy_name}: returned {score!r} for {spec.name}; it must return "
                                "a real number (higher is better)")
        return Candidate(g, spec, ev, float(score))


def _excess(ev: Evaluation) -> int:
    return max(0, ev.sram_bytes - ev.sram_limit) + max(0, ev.flash_bytes - ev.flash_limit)


def _draw(make: Callable[[], Genome], score: _Evaluator, tries: int, taken: set) -> Candidate | None:
    """The first of up to `tries` genomes from `make` that fits and is not in `taken`."""
    for _ in range(tries):
        c = score(make())
        if c is not None and c.genome not in taken:
            return c
    return None


def search(board: str, population: int = 100, iterations: int = 30, seed: int = 0, proxy: str | None = None,
           max_sram: int | None = None, max_flash: int | None = None, progress: bool = True) -> SearchResult:
    """Evolve architectures and schedules for `board` (see the module docstring); the population is best first.

    Bad input (unknown board, a population under 4, an impossible limit, nothing in the space that fits) is
    a TvmPatchError."""
    key = get_board(board).key
    if population < 4 or iterations < 0:
        raise TvmPatchError(f"--population {population} --iterations {iterations}: give a population of at "
                            "least 4 and a non-negative number of iterations")
    limits = board_limits(key, max_sram, max_flash)
    proxy_name, fn = load_proxy(proxy)
    rng = random.Random(seed)
    score = _Evaluator(key, limits, fn, proxy_name)
    result = SearchResult(key, seed, proxy_name, [])
    pop: dict[Genome, Candidate] = {}
    bar = tqdm(total=iterations + 1, desc=f"search {key}", unit="gen", disable=not progress, leave=False)
    try:
        for _ in range(population):  # generation 0: random genomes that fit
            c = _draw(lambda: random_genome(rng), score, DRAWS_PER_SLOT, set(pop))
            if c is not None:
                pop[c.genome] = c
        if not pop:
            raise TvmPatchError(_nothing_fits(key, limits, score.closest, population * DRAWS_PER_SLOT))
        result.population = sorted(pop.values(), key=Candidate.rank_key)
        result.history.append(result.population[0].score)
        bar.update()
        for _ in range(iterations):
            parents = result.population[:max(2, int(population * PARENT_SHARE))]
            nxt = {c.genome: c for c in parents}
            n_mut = int(population * MUTATE_SHARE)
            while len(nxt) < population:
                if len(nxt) - len(parents) < n_mut:
                    make = lambda: mutate(rng.choice(parents).genome, rng, MUTATE_PROB)  # noqa: E731
                else:
                    make = lambda: crossover(rng.choice(parents).genome, rng.choice(parents).genome, rng)  # noqa: E731
                c = _draw(make, score, DRAWS_PER_SLOT, set(nxt))
                if c is None:
                    break  # the neighbourhood is exhausted: keep a smaller population
                nxt[c.genome] = c
            result.population = sorted(nxt.values(), key=Candidate.rank_key)
            result.history.append(result.population[0].score)
            bar.update()
    except KeyboardInterrupt:
        result.interrupted = True
        if not result.population and pop:
            result.population = sorted(pop.values(), key=Candidate.rank_key)
    finally:
        bar.close()
    try:
        result.population = sorted([_best_schedule(c, score) for c in result.population], key=Candidate.rank_key)
    except KeyboardInterrupt:  # a second Ctrl-C: keep the schedules evolution found
        result.interrupted = True
    result.evaluated = len(score.seen)
    return result


def _best_schedule(c: Candidate, score: _Evaluator) -> Candidate:
    """`c`'s architecture with the best of all its schedules that fit (by `Candidate.rank_key`: with the MACs
    proxy, the fewest executed MACs), so that the plan reported is not just the one evolution happened on."""
    g = c.genome
    options = [replace(g, split=0)] + [replace(g, split=n, patches=p, halo=h) for n in range(2, max_split(g.depths) + 1)
                                       for p in PATCHES for h in HALO_MODES]
    return min([c, *(x for x in map(score, options) if x is not None)], key=Candidate.rank_key)


def _nothing_fits(board: str, limits: tuple[int, int], closest: Evaluation | None, draws: int) -> str:
    sram, flash = limits
    if closest is None:
        return (f"no architecture of the search space could be scheduled on {board} in {draws} draws; "
                "this is a bug, please report it")
    return (f"nothing in the search space fits {board} (SRAM {sram:,} B, Flash {flash:,} B) after {draws} draws: "
            f"the closest needs SRAM {closest.sram_bytes:,} B and Flash {closest.flash_bytes:,} B; "
            "raise --max-sram/--max-flash or choose a larger board")
