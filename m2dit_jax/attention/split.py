"""The ``split`` backend: mask 1 as a few *unmasked* attentions, never an L x L array.

Mask 1 only ever lets a query see whole key groups: its own scene's real caption, its own
scene's video, all video (and, for the ablation modes, all real captions). So each query group
is answered by unmasked attentions over those key groups, combined exactly. Two ways:

* ``impl="chunked"`` / ``"dense"`` (log-sum-exp merge): every part returns (out, lse) and the
  parts merge through their log-sum-exp (``merge_partials``). Video queries x all video keys is
  one big mask-free attention; the caption parts are small. ``chunked`` is the pure-JAX tiled
  online softmax (memory linear in L: the CPU path); ``dense`` materialises each part's logits
  (small problems only).
* ``impl="cudnn"`` / ``"xla"`` (the release's two-call split): video queries of scene s attend
  over [T_s ; V_all] and caption queries over [T_s ; V_s], each one call of
  ``jax.nn.dot_product_attention`` (cuDNN flash attention on GPU). Only the forward output is
  needed, so no log-sum-exp gradient is required from the fused kernel. Scenes run one after
  another under ``jax.checkpoint``, so only one [T_s ; V_all] key copy exists at a time, in the
  forward and the backward (the release keeps S copies).

Caption padding queries attend only to their own real caption (the layout's convention).

``mask_mode="causal_conditions"`` (the first K scenes are conditions): caption queries are as
in mask 1; video queries of a condition scene see the *condition* video (scenes < K) instead
of all video, those of a generated scene see all video — still whole key groups, so the same
unmasked parts answer it exactly.

Ragged layouts (``layout.is_ragged``: scenes of their own frame counts) use the same parts
with per-scene video groups of different lengths, so they cannot be folded into batch rows.
Caption blocks are still equal (folded as before); each scene's video is a contiguous piece of
the flat video ``V_1 .. V_S`` (cut with ``jnp.split``, whose gradient is a concatenation, not S
padded copies). "Own scene" parts run as a Python loop over scenes (scene s's caption queries
against V_s, scene s's video queries against T_s and, for "independent", against V_s); "all
video" is one flat attention of all video queries over all video keys; for
"causal_conditions" the condition video V_1 .. V_K is a contiguous prefix, so condition video
queries attend over that prefix and generated ones over all video — two flat calls. In the
two-call impls a caption query of scene s sees [T_s ; V_s] and a video query [T_s ; V_all]
(condition scenes: [T_s ; V_cond]) per scene under ``jax.checkpoint``, as for equal scenes
(one such key copy at a time). Nothing else copies K/V per scene, so chunked memory stays
linear in L. Equal layouts keep the folded path above, unchanged.

Packed layouts (``layout.is_packed``: P independent samples of consecutive scenes in one row)
take the same scene-by-scene path, equal scenes or not: every "all" group (all video, and the
ablation "full"'s all captions) becomes the query's own sample's group, a contiguous range of
the caption blocks and of the flat video, so "all" parts run once per sample.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from m2dit_jax.attention import dispatch
from m2dit_jax.attention.online_softmax import (
    DEFAULT_BLOCK_KV,
    DEFAULT_BLOCK_Q,
    chunked_attention,
    dense_attention_with_lse,
    merge_partials,
)
from m2dit_jax.layout import CAUSAL_CONDITIONS, SceneLayout

SPLIT_IMPLS = ("auto", "chunked", "dense", "cudnn", "xla")
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def default_split_impl(dtype, head_dim: int) -> str:
    """cuDNN flash attention on GPU for half-precision inputs it supports, else chunked."""
    platform = dispatch.target_platform()
    if platform == "gpu" and dtype in _CUDNN_DTYPES and head_dim % 8 == 0 and head_dim <= 128:
        return "cudnn"
    return "chunked"


class _Groups:
    """q/k/v cut into per-scene caption and video groups: (B, S, n, H, Dh) arrays."""

    def __init__(self, x: jax.Array, layout: SceneLayout):
        b, _, h, d = x.shape
        s = layout.num_scenes
        self.text = x[:, : layout.text_total].reshape(b, s, layout.text_block, h, d)
        self.real_text = self.text[:, :, : layout.text_len]
        self.pad_text = self.text[:, :, layout.text_len :]
        self.video = x[:, layout.text_total :].reshape(b, s, layout.video_len, h, d)


def _fold(x: jax.Array) -> jax.Array:
    """(B, S, n, ...) -> (B*S, n, ...): each scene becomes its own batch row."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def _flat(x: jax.Array) -> jax.Array:
    """(B, S, n, ...) -> (B, S*n, ...): all scenes in one sequence."""
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def _unfold(x: jax.Array, b: int, s: int) -> jax.Array:
    return x.reshape(b, s, -1, *x.shape[2:])


# Which key groups each (non-padding) query group sees, per mask mode: (scope, group) with
# scope "own" = same scene only, "all" = every scene, "causal" = condition scenes over the
# condition scenes, generated scenes over every scene.
_PARTS = {
    "mask2dit": {"text": (("own", "real_text"), ("own", "video")),
                 "video": (("all", "video"), ("own", "real_text"))},
    "independent": {"text": (("own", "real_text"), ("own", "video")),
                    "video": (("own", "video"), ("own", "real_text"))},
    "full": {"text": (("all", "real_text"), ("all", "video")),
             "video": (("all", "video"), ("all", "real_text"))},
    # "causal": condition scenes' queries over the condition scenes' keys, the others over all.
    CAUSAL_CONDITIONS: {"text": (("own", "real_text"), ("own", "video")),
                        "video": (("causal", "video"), ("own", "real_text"))},
}  # fmt: skip


def _lse_merge_attention(q, k, v, layout, *, scale, attend) -> jax.Array:
    b, s = q.shape[0], layout.num_scenes
    gq, gk, gv = _Groups(q, layout), _Groups(k, layout), _Groups(v, layout)

    def part(queries, scope, group):
        keys, values = getattr(gk, group), getattr(gv, group)
        if scope == "own":
            out, lse = attend(_fold(queries), _fold(keys), _fold(values))
            return _unfold(out, b, s), _unfold(lse, b, s)
        if scope == "causal":
            n = layout.num_conditions
            cond_out, cond_lse = attend(
                _flat(queries[:, :n]), _flat(keys[:, :n]), _flat(values[:, :n])
            )
            gen_out, gen_lse = attend(_flat(queries[:, n:]), _flat(keys), _flat(values))
            out = jnp.concatenate([_unfold(cond_out, b, n), _unfold(gen_out, b, s - n)], axis=1)
            lse = jnp.concatenate([_unfold(cond_lse, b, n), _unfold(gen_lse, b, s - n)], axis=1)
            return out, lse
        out, lse = attend(_flat(queries), _flat(keys), _flat(values))
        return _unfold(out, b, s), _unfold(lse, b, s)

    results = {}
    for name, queries in (("text", gq.real_text), ("video", gq.video)):
        parts = [part(queries, scope, group) for scope, group in _PARTS[layout.mask_mode][name]]
        results[name] = merge_partials(parts)[0]
    text = results["text"]
    if layout.text_padding:
        pad_out, _ = part(gq.pad_text, "own", "real_text")
        text = jnp.concatenate([text, pad_out], axis=2)
    return jnp.concatenate([_flat(text), _flat(results["video"])], axis=1).astype(q.dtype)


def _checkpointed_scene_video(fused: Callable) -> Callable:
    """One scene's video queries over [its caption ; the video it sees], one fused call under
    ``jax.checkpoint`` (only one such key copy is alive at a time, forward and backward)."""

    @jax.checkpoint
    def scene_video(queries, text_k, text_v, all_k, all_v):
        keys = jnp.concatenate([text_k, all_k], axis=1)
        values = jnp.concatenate([text_v, all_v], axis=1)
        return fused(queries, keys, values)

    return scene_video


def _two_call_attention(q, k, v, layout, *, scale, implementation) -> jax.Array:
    b, s = q.shape[0], layout.num_scenes
    gq, gk, gv = _Groups(q, layout), _Groups(k, layout), _Groups(v, layout)

    def fused(queries, keys, values):
        return jax.nn.dot_product_attention(
            queries, keys, values, scale=scale, implementation=implementation
        )

    def own_scene(queries, *key_groups):
        keys = jnp.concatenate([getattr(gk, g) for g in key_groups], axis=2)
        values = jnp.concatenate([getattr(gv, g) for g in key_groups], axis=2)
        return _unfold(fused(_fold(queries), _fold(keys), _fold(values)), b, s)

    mode = layout.mask_mode
    if mode == "full":
        keys = jnp.concatenate([_flat(gk.real_text), _flat(gk.video)], axis=1)
        values = jnp.concatenate([_flat(gv.real_text), _flat(gv.video)], axis=1)
        text = _unfold(fused(_flat(gq.real_text), keys, values), b, s)
        video = _unfold(fused(_flat(gq.video), keys, values), b, s)
    else:
        text = own_scene(gq.real_text, "real_text", "video")
        if mode == "independent":
            video = own_scene(gq.video, "real_text", "video")
        else:
            all_k, all_v = _flat(gk.video), _flat(gv.video)
            if mode == CAUSAL_CONDITIONS:  # condition scenes see the condition video only
                n = layout.num_conditions
                cond_k, cond_v = _flat(gk.video[:, :n]), _flat(gv.video[:, :n])
            else:
                n, cond_k, cond_v = 0, all_k, all_v

            scene_video = _checkpointed_scene_video(fused)

            video = jnp.stack(
                [
                    scene_video(
                        gq.video[:, i],
                        gk.real_text[:, i],
                        gv.real_text[:, i],
                        cond_k if i < n else all_k,
                        cond_v if i < n else all_v,
                    )
                    for i in range(s)
                ],
                axis=1,
            )
    if layout.text_padding:
        text = jnp.concatenate([text, own_scene(gq.pad_text, "real_text")], axis=2)
    return jnp.concatenate([_flat(text), _flat(video)], axis=1).astype(q.dtype)


# ---------------------------------------------------------------------- ragged / packed layouts
def _unfolded(layout: SceneLayout) -> bool:
    """Ragged scenes cannot be folded into batch rows; packed samples restrict "all" to the
    query's own sample: both take the scene-by-scene path below."""
    return layout.is_ragged or layout.is_packed


class _RaggedGroups:
    """q/k/v of a ragged or packed layout: equal caption groups (B, S, n, H, Dh) as in
    ``_Groups``, the flat video (B, V_total, H, Dh), each scene's video as its own (B, n_s, H,
    Dh) piece, and per packed sample its captions (B, S_j, n, H, Dh) and video (B, V_j, H, Dh)
    (one sample: the whole caption group and the flat video)."""

    def __init__(self, x: jax.Array, layout: SceneLayout):
        b, _, h, d = x.shape
        s = layout.num_scenes
        self.text = x[:, : layout.text_total].reshape(b, s, layout.text_block, h, d)
        self.real_text = self.text[:, :, : layout.text_len]
        self.pad_text = self.text[:, :, layout.text_len :]
        self.video = x[:, layout.text_total :]
        cuts = [int(c) for c in np.cumsum(layout.video_lens)[:-1]]
        # jnp.split's VJP concatenates the cotangents (no full-length zero-padded copies).
        self.scene_video = jnp.split(self.video, cuts, axis=1) if cuts else [self.video]
        self.scene_real_text = [t[:, 0] for t in jnp.split(self.real_text, s, axis=1)]
        self.condition_video_len = sum(layout.video_lens[: layout.num_conditions])
        self.sample_of_scene = [int(j) for j in layout.scene_sample()]
        if layout.is_packed:
            starts = layout.sample_starts[1:]
            video_cuts = [sum(layout.video_lens[:start]) for start in starts]
            self.sample_video = jnp.split(self.video, video_cuts, axis=1)
            self.sample_real_text = jnp.split(self.real_text, list(starts), axis=1)
        else:
            self.sample_video, self.sample_real_text = [self.video], [self.real_text]


def _join(parts, join) -> tuple[jax.Array, jax.Array]:
    """[(out, lse)] of consecutive query groups -> one (out, lse), joined by ``join``."""
    return join([out for out, _ in parts], 1), join([lse for _, lse in parts], 1)


def _ragged_lse_merge_attention(q, k, v, layout, *, scale, attend) -> jax.Array:
    b, s = q.shape[0], layout.num_scenes
    gq, gk, gv = _RaggedGroups(q, layout), _RaggedGroups(k, layout), _RaggedGroups(v, layout)

    def sample_keys(group):  # "all" = every key of the query's own packed sample
        keys, values = getattr(gk, f"sample_{group}"), getattr(gv, f"sample_{group}")
        if group == "real_text":
            keys, values = [_flat(x) for x in keys], [_flat(x) for x in values]
        return keys, values

    def text_part(scope, group):  # real caption queries, (B, S, text_len, H, Dh)
        if scope == "own" and group == "real_text":  # captions are equal: fold as before
            out, lse = attend(_fold(gq.real_text), _fold(gk.real_text), _fold(gv.real_text))
            return _unfold(out, b, s), _unfold(lse, b, s)
        if scope == "own":  # scene i's captions over V_i: one call per scene
            own = [
                attend(gq.scene_real_text[i], gk.scene_video[i], gv.scene_video[i])
                for i in range(s)
            ]
            return _join(own, jnp.stack)
        keys, values = sample_keys(group)  # "all": one flat call per packed sample
        parts = []
        for j, queries in enumerate(gq.sample_real_text):
            out, lse = attend(_flat(queries), keys[j], values[j])
            n = queries.shape[1]
            parts.append((_unfold(out, b, n), _unfold(lse, b, n)))
        return _join(parts, jnp.concatenate)

    def video_part(scope, group):  # video queries, flat (B, V_total, H, Dh)
        if scope == "own":  # scene i's video over T_i (or V_i): one call per scene
            keys, values = getattr(gk, f"scene_{group}"), getattr(gv, f"scene_{group}")
            own = [attend(gq.scene_video[i], keys[i], values[i]) for i in range(s)]
            return _join(own, jnp.concatenate)
        if scope == "causal":  # condition video = the contiguous prefix V_1 .. V_K (one sample)
            n = gq.condition_video_len
            cond_q, gen_q = jnp.split(gq.video, [n], axis=1)
            cond = attend(cond_q, gk.video[:, :n], gv.video[:, :n])
            return _join([cond, attend(gen_q, gk.video, gv.video)], jnp.concatenate)
        keys, values = sample_keys(group)  # "all" video / captions: one flat call per sample
        parts = [attend(queries, keys[j], values[j]) for j, queries in enumerate(gq.sample_video)]
        return _join(parts, jnp.concatenate)

    parts = _PARTS[layout.mask_mode]
    text = merge_partials([text_part(*p) for p in parts["text"]])[0]
    video = merge_partials([video_part(*p) for p in parts["video"]])[0]
    if layout.text_padding:
        pad_out, _ = attend(_fold(gq.pad_text), _fold(gk.real_text), _fold(gv.real_text))
        text = jnp.concatenate([text, _unfold(pad_out, b, s)], axis=2)
    return jnp.concatenate([_flat(text), video], axis=1).astype(q.dtype)


def _ragged_two_call_attention(q, k, v, layout, *, scale, implementation) -> jax.Array:
    b, s = q.shape[0], layout.num_scenes
    gq, gk, gv = _RaggedGroups(q, layout), _RaggedGroups(k, layout), _RaggedGroups(v, layout)

    def fused(queries, keys, values):
        return jax.nn.dot_product_attention(
            queries, keys, values, scale=scale, implementation=implementation
        )

    def own_scene(queries, i):  # [T_i ; V_i] for queries of scene i
        keys = jnp.concatenate([gk.scene_real_text[i], gk.scene_video[i]], axis=1)
        values = jnp.concatenate([gv.scene_real_text[i], gv.scene_video[i]], axis=1)
        return fused(queries, keys, values)

    mode = layout.mask_mode
    if mode == "full":  # every caption and video token of the query's own packed sample
        texts, videos = [], []
        for j, n in enumerate(layout.sample_sizes):
            keys = jnp.concatenate([_flat(gk.sample_real_text[j]), gk.sample_video[j]], axis=1)
            values = jnp.concatenate([_flat(gv.sample_real_text[j]), gv.sample_video[j]], axis=1)
            texts.append(_unfold(fused(_flat(gq.sample_real_text[j]), keys, values), b, n))
            videos.append(fused(gq.sample_video[j], keys, values))
        text, video = jnp.concatenate(texts, axis=1), jnp.concatenate(videos, axis=1)
    else:
        text = jnp.stack([own_scene(gq.scene_real_text[i], i) for i in range(s)], axis=1)
        if mode == "independent":
            video = jnp.concatenate([own_scene(gq.scene_video[i], i) for i in range(s)], axis=1)
        else:
            # "all video" of scene i = the video of its packed sample (all video: one sample)
            sample_k = [gk.sample_video[j] for j in gk.sample_of_scene]
            sample_v = [gv.sample_video[j] for j in gv.sample_of_scene]
            if mode == CAUSAL_CONDITIONS:  # condition scenes see the condition video only
                n, cut = layout.num_conditions, gk.condition_video_len
                cond_k, cond_v = gk.video[:, :cut], gv.video[:, :cut]
            else:
                n, cond_k, cond_v = 0, None, None

            scene_video = _checkpointed_scene_video(fused)

            video = jnp.concatenate(
                [
                    scene_video(
                        gq.scene_video[i],
                        gk.scene_real_text[i],
                        gv.scene_real_text[i],
                        cond_k if i < n else sample_k[i],
                        cond_v if i < n else sample_v[i],
                    )
                    for i in range(s)
                ],
                axis=1,
            )
    if layout.text_padding:
        pad = fused(_fold(gq.pad_text), _fold(gk.real_text), _fold(gv.real_text))
        text = jnp.concatenate([text, _unfold(pad, b, s)], axis=2)
    return jnp.concatenate([_flat(text), video], axis=1).astype(q.dtype)


def split_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    layout: SceneLayout,
    *,
    scale: float,
    impl: str = "auto",
    block_q: int = DEFAULT_BLOCK_Q,
    block_kv: int = DEFAULT_BLOCK_KV,
) -> jax.Array:
    """Mask-1 attention from unmasked parts; exact, differentiable, no L x L array.

    Args:
      q, k, v: (B, L, H, Dh), L == layout.seq_len.
      layout: the scene layout (any ``mask_mode``; equal or ragged scenes, packed samples).
      scale: logit scale.
      impl: "auto" (cuDNN on GPU for bf16/f16, else "chunked"), "chunked", "dense", "cudnn",
        "xla" (see the module docstring).
      block_q, block_kv: tile sizes of the "chunked" online softmax.
    Returns:
      (B, L, H, Dh) in q's dtype.
    """
    if impl not in SPLIT_IMPLS:
        raise ValueError(f"split attention impl must be one of {SPLIT_IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = default_split_impl(q.dtype, q.shape[-1])
        dispatch.log_choice_once(
            ("split", impl, str(q.dtype), q.shape[-1], dispatch.target_platform()),
            f"split attention impl='auto' -> {impl!r} for {q.dtype} head_dim {q.shape[-1]} "
            f"on {dispatch.target_platform()}"
            + (
                "" if impl == "cudnn" else " (cuDNN needs a GPU and bf16/f16, head_dim%8==0 <= 128)"
            ),
        )
    if impl in ("cudnn", "xla"):
        two_call = _ragged_two_call_attention if _unfolded(layout) else _two_call_attention
        return two_call(q, k, v, layout, scale=scale, implementation=impl)
    attend: Callable
    if impl == "chunked":

        def attend(q_, k_, v_):
            return chunked_attention(q_, k_, v_, scale=scale, block_q=block_q, block_kv=block_kv)
    else:

        def attend(q_, k_, v_):
            return dense_attention_with_lse(q_, k_, v_, scale=scale)

    lse_merge = _ragged_lse_merge_attention if _unfolded(layout) else _lse_merge_attention
    return lse_merge(q, k, v, layout, scale=scale, attend=attend)


dispatch.register_backend("split", split_attention)
