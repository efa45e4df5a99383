"""Packed sequences: several samples in one sequence row, up to a fixed token budget.

One concept: the *packing plan* of a batch and the token counting behind it. The model
compiles one program per static layout, so all B rows of a packed batch share one plan, an
ordered tuple of P sample layouts (each S per-scene frame counts); row r holds P different
samples, the j-th of layout plan[j], their scenes concatenated in plan order.

Tokens of a sample = S * text tokens + sum_i latent_frames_i * frame tokens (``PackSpec``).

The plan of batch k is first-fit over candidate layouts drawn from the data's layout
distribution (the same distribution the unpacked pipeline draws a batch layout from): each
candidate that still fits the remaining budget is appended; packing stops after
``MAX_MISSES`` consecutive candidates that do not fit, or when not even the smallest layout
fits. Candidates of the ``PLAN_BLOCK`` batches of a block come from one rng seeded by (seed,
block), so a plan is a pure function of (seed, batch index), the same on every process and
grain worker, and a block is cheap to (re)compute when resuming far into training.

``pack_fill_rate`` / ``padded_fill_rate`` are the pure numbers a benchmark reports side by
side: real tokens / budget of packed rows, and real tokens / padded tokens of equal-length
batching (each sample padded to S * max_frames frames).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from m2dit_jax.data.config import FOLD_ENCODERS
from m2dit_jax.data.frame_sampling import FrameRule

MAX_MISSES = 8  # consecutive candidates that do not fit before a plan is closed
PLAN_BLOCK = 256  # batches whose candidates one rng draws
_PACK_TAG = 0x9AC4  # rng stream of the packing plans
_ID_STRIDE = 64  # blocks between stored per-layout cumulative counts


@dataclasses.dataclass(frozen=True)
class PackSpec:
    """How many tokens a sample takes, and the row budget.

    budget: tokens of one packed row (``pack_tokens``).
    frame_tokens: model tokens per latent frame (``pack_frame_tokens``).
    text_tokens: tokens of one caption block (``pack_text_tokens`` or ``text_len``).
    num_scenes: S, scenes per sample.
    rule: the frame rule turning pixel counts into latent frames; None = the layouts already
      count latent frames (source="latents").
    patch_t: temporal patch of the space_to_depth encoder (1 otherwise).
    """

    budget: int
    frame_tokens: int
    text_tokens: int
    num_scenes: int
    rule: FrameRule | None = None
    patch_t: int = 1

    @classmethod
    def from_config(cls, config: Any, *, latent_layouts: bool | None = None) -> PackSpec:
        if latent_layouts is None:
            latent_layouts = config.source == "latents"
        s2d = config.video_encoder in FOLD_ENCODERS
        return cls(
            budget=int(config.pack_tokens),
            frame_tokens=int(config.pack_frame_tokens),
            text_tokens=int(config.get("pack_text_tokens", 0)) or int(config.text_len),
            num_scenes=int(config.num_scenes),
            rule=None if latent_layouts else FrameRule.from_config(config),
            patch_t=int(config.patch_t) if s2d else 1,
        )

    def latent_frames(self, frames: np.ndarray) -> np.ndarray:
        """Per-scene counts (any shape) -> latent frames (``FrameRule.latent_frames``)."""
        frames = np.asarray(frames, np.int64)
        if self.rule is None:
            return frames
        if self.rule.rule == "4k+1":
            return (frames - 1) // 4 + 1
        return frames // self.patch_t

    def tokens(self, layouts: np.ndarray) -> np.ndarray:
        """(..., S) per-scene counts -> (...,) tokens of each sample."""
        layouts = np.asarray(layouts, np.int64)
        latent = self.latent_frames(layouts).sum(-1)
        return layouts.shape[-1] * self.text_tokens + latent * self.frame_tokens

    def sample_tokens(self, layout: Sequence[int]) -> int:
        """Tokens of one sample of ``layout``."""
        return int(self.tokens(np.asarray(layout)))

    def plan_tokens(self, plan: Iterable[Sequence[int]]) -> int:
        """Real tokens of one packed row of ``plan``."""
        return sum(self.sample_tokens(layout) for layout in plan)

    def padded_tokens(self, longest: int | None = None) -> int:
        """Tokens of one sample padded to S scenes of ``longest`` frames each (the layouts'
        unit; default: the rule's max_frames) — what equal-length batching allocates."""
        if longest is None:
            if self.rule is None:
                raise ValueError("latent layouts need the longest per-scene count explicitly")
            longest = self.rule.max_frames
        return self.sample_tokens((int(longest),) * self.num_scenes)


def first_fit(
    candidate_tokens: Iterable[int], budget: int, smallest: int, max_misses: int = MAX_MISSES
) -> list[int]:
    """Positions of the candidates a row takes, in order (see the module docstring); the
    candidates are read only as far as needed."""
    left, misses, taken = int(budget), 0, []
    for n, tokens in enumerate(candidate_tokens):
        if left < smallest or misses >= max_misses:
            break
        if tokens <= left:
            taken.append(n)
            left -= int(tokens)
            misses = 0
        else:
            misses += 1
    return taken


def pack_fill_rate(plans: Iterable[Sequence[Sequence[int]]], spec: PackSpec) -> float:
    """Mean over packed rows of real tokens / budget (``plans``: one plan per batch)."""
    fills = [spec.plan_tokens(plan) / spec.budget for plan in plans]
    if not fills:
        raise ValueError("no plans to measure")
    return float(np.mean(fills))


def padded_fill_rate(
    layouts: Iterable[Sequence[int]], spec: PackSpec, *, longest: int | None = None
) -> float:
    """Real tokens / allocated tokens when every sample is padded to S * ``longest`` frames
    (equal-length batching of the same samples; ``longest`` defaults to max_frames)."""
    layouts = [tuple(int(f) for f in lay) for lay in layouts]
    if not layouts:
        raise ValueError("no layouts to measure")
    real = sum(spec.sample_tokens(lay) for lay in layouts)
    return real / (len(layouts) * spec.padded_tokens(longest))


class PackPlanner:
    """Packing plans of batch k, with cumulative sample counts for streaming units.

    ``draw(rng, shape) -> (*shape, S)`` int array: candidate layouts (draw mode) or
    ``(*shape,)`` layout ids (``layouts`` given: bucketed sources, ids index ``layouts``).
    ``plan(k)`` -> tuple of P keys (layout tuples, or layout ids when bucketed);
    ``samples_before(k)``: samples per row in batches < k; ``counts_before(k)``: per layout
    id, samples per row of that layout in batches < k (bucketed only).
    """

    def __init__(
        self,
        spec: PackSpec,
        *,
        seed: int,
        draw: Callable[[np.random.Generator, tuple[int, ...]], np.ndarray],
        smallest: int,
        layouts: Sequence[tuple[int, ...]] | None = None,
        fit: Callable[[tuple[int, ...]], tuple[int, ...]] | None = None,
        max_misses: int = MAX_MISSES,
        block: int = PLAN_BLOCK,
        vocabulary: int = 0,
    ):
        self.spec, self.seed, self.draw = spec, int(seed), draw
        # > 0: only this many distinct plans (the first ones drawn); each batch uses one of
        # them (uniformly, from (seed, batch)). Every plan compiles its own train step.
        self.vocabulary = int(vocabulary)
        if self.vocabulary < 0 or self.vocabulary > block:
            raise ValueError(f"pack_plans={vocabulary} must be in [0, {block}]")
        self.smallest, self.layouts, self.fit = int(smallest), layouts, fit
        self.max_misses, self.block = int(max_misses), int(block)
        if self.smallest > spec.budget:
            raise ValueError(
                f"pack_tokens={spec.budget} cannot hold one sample of the smallest layout "
                f"({self.smallest} tokens)"
            )
        self.max_samples = spec.budget // self.smallest
        self.candidates = (self.max_samples + 1) * self.max_misses
        if layouts is not None:
            self._layout_tokens = spec.tokens(np.asarray(layouts)).tolist()
        self._reset()

    def _reset(self):
        self._plans: dict[int, list[tuple]] = {}
        self._fit_cache: dict[tuple, tuple] = {}
        n = 0 if self.layouts is None else len(self.layouts)
        self._cum_total = [0]  # samples per row before each block
        self._cum_ids = {0: np.zeros(n, np.int64)}  # per-id counts before blocks 0, stride, ..
        self._ids_run = self._cum_ids[0]
        self._ids_at = (0, self._cum_ids[0])

    def __getstate__(self):
        state = dict(self.__dict__)
        zero = self._cum_ids[0] * 0
        state.update(
            _plans={},
            _fit_cache={},
            _cum_total=[0],
            _cum_ids={0: zero},
            _ids_run=zero,
            _ids_at=(0, zero),
        )
        return state

    def _fitted(self, row: np.ndarray, cands: list):
        """Tokens of each drawn layout of ``row`` after ``fit`` (memoised), appending the
        fitted layouts to ``cands`` as they are read."""
        cache = self._fit_cache
        for lay in row:
            lay = tuple(lay.tolist())
            got = cache.get(lay)
            if got is None:
                if len(cache) >= 100_000:
                    cache.clear()
                fitted = lay if self.fit is None else tuple(self.fit(lay))
                got = cache[lay] = (fitted, self.spec.sample_tokens(fitted))
            cands.append(got[0])
            yield got[1]

    def block_plans(self, b: int) -> list[tuple]:
        """The plans of the batches of block ``b`` (cached for the last few blocks)."""
        if b in self._plans:
            return self._plans[b]
        if self.vocabulary:
            vocab = self._raw_block_plans(0)[: self.vocabulary]
            rng = np.random.default_rng([self.seed % 2**32, int(b), _PACK_TAG, 1])
            plans = [vocab[i] for i in rng.integers(len(vocab), size=self.block)]
        else:
            plans = self._raw_block_plans(b)
        if len(self._plans) >= 4:
            self._plans.pop(next(iter(self._plans)))
        self._plans[b] = plans
        return plans

    def distinct_plans(self) -> int | None:
        """How many distinct plans batches use: ``vocabulary``, or None (unbounded)."""
        return self.vocabulary or None

    def _raw_block_plans(self, b: int) -> list[tuple]:
        """First-fit plans of block ``b``, one per batch, freshly drawn."""
        if ("raw", b) in self._plans:
            return self._plans[("raw", b)]
        rng = np.random.default_rng([self.seed % 2**32, int(b), _PACK_TAG])
        drawn = self.draw(rng, (self.block, self.candidates))
        budget, smallest, misses = self.spec.budget, self.smallest, self.max_misses
        plans = []
        if self.layouts is not None:  # layout ids
            per_id = self._layout_tokens
            for ids in drawn.tolist():
                taken = first_fit((per_id[i] for i in ids), budget, smallest, misses)
                plans.append(tuple(ids[n] for n in taken))
        else:  # layouts drawn per scene (token_budget may shorten them: ``fit``)
            for row in drawn:
                cands = []
                taken = first_fit(self._fitted(row, cands), budget, smallest, misses)
                plans.append(tuple(cands[n] for n in taken))
        if self.vocabulary and b == 0:
            self._plans[("raw", 0)] = plans  # the vocabulary: kept
        return plans

    def plan(self, k: int) -> tuple:
        b, j = divmod(int(k), self.block)
        return self.block_plans(b)[j]

    def _extend(self, b: int) -> None:
        """Cumulative counts up to block ``b``: totals of every block; per-id counts (bucketed)
        only every ``_ID_STRIDE`` blocks, which bounds their memory for sources of many
        layouts (``counts_before`` adds the blocks in between)."""
        while len(self._cum_total) <= b:
            c = len(self._cum_total) - 1
            plans = self.block_plans(c)
            self._cum_total.append(self._cum_total[-1] + sum(len(p) for p in plans))
            if self.layouts is not None:
                self._ids_run = self._ids_run + self._block_ids(plans)
                if (c + 1) % _ID_STRIDE == 0:
                    self._cum_ids[c + 1] = self._ids_run.copy()

    def _block_ids(self, plans) -> np.ndarray:
        ids = np.fromiter((i for p in plans for i in p), np.int64)
        return np.bincount(ids, minlength=len(self.layouts))

    def samples_before(self, k: int) -> int:
        b, j = divmod(int(k), self.block)
        self._extend(b)
        return self._cum_total[b] + sum(len(p) for p in self.block_plans(b)[:j])

    def counts_before(self, k: int) -> np.ndarray:
        b, j = divmod(int(k), self.block)
        self._extend(b)
        if self._ids_at[0] != b:  # per-id counts before block b (kept for the next call)
            at = b // _ID_STRIDE * _ID_STRIDE
            counts = self._cum_ids[at].copy()
            for c in range(at, b):
                counts += self._block_ids(self.block_plans(c))
            self._ids_at = (b, counts)
        counts = self._ids_at[1].copy()
        for plan in self.block_plans(b)[:j]:
            for i in plan:
                counts[i] += 1
        return counts

    def batches_within(self, samples_per_row: int) -> int:
        """The most batches (>= 1) whose plans need at most ``samples_per_row`` samples per
        row in total (an epoch's worth of batches)."""
        b = 0
        while True:
            self._extend(b + 1)
            if self._cum_total[b + 1] > samples_per_row:
                break
            b += 1
        k, total = b * self.block, self._cum_total[b]
        for plan in self.block_plans(b):
            if total + len(plan) > samples_per_row:
                break
            total += len(plan)
            k += 1
        return max(1, k)

    def layout_of(self, key) -> tuple[int, ...]:
        """A plan entry -> its per-scene counts."""
        return tuple(self.layouts[key]) if self.layouts is not None else tuple(key)

    def plan_layouts(self, k: int) -> tuple[tuple[int, ...], ...]:
        return tuple(self.layout_of(key) for key in self.plan(k))


def draw_planner(config, *, seed: int, spec: PackSpec | None = None, **options) -> PackPlanner:
    """The planner of a source without per-unit layouts (synthetic_shapes, manifest stage 1):
    candidates drawn like ``FrameRule.draw`` (each scene uniform over the allowed counts, then
    fit to ``token_budget``)."""
    rule = FrameRule.from_config(config)
    spec = spec or PackSpec.from_config(config, latent_layouts=False)
    s = int(config.num_scenes)
    return PackPlanner(
        spec,
        seed=seed,
        draw=_DrawScenes(rule.allowed, s),
        smallest=spec.sample_tokens((rule.min_frames,) * s),
        fit=rule.fit_budget if rule.token_budget > 0 else None,
        **options,
    )


def bucket_planner(
    layouts: Sequence[tuple[int, ...]], probs: np.ndarray, spec: PackSpec, *, seed: int, **options
) -> PackPlanner:
    """The planner of a bucketed source: candidates are layout ids drawn with ``probs`` (each
    layout's share of the units)."""
    probs = np.asarray(probs, np.float64)
    tokens = spec.tokens(np.asarray(layouts))
    too_big = [(tuple(lay), int(t)) for lay, t in zip(layouts, tokens) if t > spec.budget]
    if too_big:
        raise ValueError(
            f"data config field 'pack_tokens': {spec.budget} cannot hold one sample of layout "
            f"{too_big[0][0]} ({too_big[0][1]} tokens); raise it"
        )
    smallest = int(tokens[probs > 0].min())
    return PackPlanner(
        spec,
        seed=seed,
        draw=_DrawIds(probs),
        smallest=smallest,
        layouts=[tuple(int(f) for f in lay) for lay in layouts],
        **options,
    )


class _DrawScenes:
    """Candidate layouts: each of S scenes uniform over the allowed counts (picklable)."""

    def __init__(self, allowed: Sequence[int], num_scenes: int):
        self.allowed, self.num_scenes = np.asarray(allowed, np.int64), int(num_scenes)

    def __call__(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return self.allowed[rng.integers(len(self.allowed), size=(*shape, self.num_scenes))]


class _DrawIds:
    """Candidate layout ids drawn with the layouts' shares of the units (picklable)."""

    def __init__(self, probs: np.ndarray):
        self.probs = np.asarray(probs, np.float64)

    def __call__(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return rng.choice(len(self.probs), size=shape, p=self.probs)


def simulate_fill_rates(config, *, seed: int = 0, num_batches: int = 256) -> dict[str, float]:
    """Fill rates of a draw-mode config (synthetic_shapes, manifest stage 1) without loading
    any data: ``packed`` = mean real tokens / pack_tokens of the first ``num_batches`` plans,
    ``padded`` = real tokens / allocated tokens of the same samples padded to S * max_frames,
    plus ``samples_per_row`` (mean P). For a bucketed source, build ``bucket_planner`` from
    its layouts and shares and call ``pack_fill_rate`` / ``padded_fill_rate`` directly."""
    from m2dit_jax.data.config import validate_data_config

    validate_data_config(config)
    if int(config.get("pack_tokens", 0)) <= 0:
        raise ValueError("data config field 'pack_tokens': must be > 0 to simulate packing")
    planner = draw_planner(config, seed=seed, vocabulary=int(config.get("pack_plans", 0)))
    plans = [planner.plan_layouts(k) for k in range(num_batches)]
    return {
        "packed": pack_fill_rate(plans, planner.spec),
        "padded": padded_fill_rate([lay for p in plans for lay in p], planner.spec),
        "samples_per_row": float(np.mean([len(p) for p in plans])),
    }
