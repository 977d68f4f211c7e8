"""Mutation and crossover of genomes (the evolutionary operators of MCUNet / Once-for-All's search)."""

from __future__ import annotations

import random
from dataclasses import replace

from tvm_patch.names import HALO_MODES
from tvm_patch.search.space import (DEPTHS, EXPANDS, KERNELS, PATCHES, RESOLUTIONS, WIDTHS, Genome, max_split)


def _maybe(rng: random.Random, prob: float, value, choices):
    return rng.choice(choices) if rng.random() < prob else value


def _fix_split(g: Genome) -> Genome:
    """Keep the patch stage inside the (possibly shallower) network."""
    return g if g.split <= max_split(g.depths) else replace(g, split=max_split(g.depths))


def mutate(g: Genome, rng: random.Random, prob: float) -> Genome:
    """Each gene is redrawn with probability `prob` (the schedule's genes too)."""
    depths = tuple(_maybe(rng, prob, d, DEPTHS) for d in g.depths)
    out = Genome(resolution=_maybe(rng, prob, g.resolution, RESOLUTIONS), width=_maybe(rng, prob, g.width, WIDTHS),
                 depths=depths, kernels=tuple(_maybe(rng, prob, k, KERNELS) for k in g.kernels),
                 expands=tuple(_maybe(rng, prob, e, EXPANDS) for e in g.expands),
                 split=_maybe(rng, prob, g.split, [0, *range(2, max_split(depths) + 1)]),
                 patches=_maybe(rng, prob, g.patches, PATCHES), halo=_maybe(rng, prob, g.halo, HALO_MODES))
    return _fix_split(out)


def crossover(a: Genome, b: Genome, rng: random.Random) -> Genome:
    """Each gene (each stage's depth, each block's kernel and expand ratio) from one parent or the other."""
    def pick(x, y):
        return x if rng.random() < 0.5 else y

    out = Genome(resolution=pick(a.resolution, b.resolution), width=pick(a.width, b.width),
                 depths=tuple(pick(x, y) for x, y in zip(a.depths, b.depths)),
                 kernels=tuple(pick(x, y) for x, y in zip(a.kernels, b.kernels)),
                 expands=tuple(pick(x, y) for x, y in zip(a.expands, b.expands)),
                 split=pick(a.split, b.split), patches=pick(a.patches, b.patches), halo=pick(a.halo, b.halo))
    return _fix_split(out)
