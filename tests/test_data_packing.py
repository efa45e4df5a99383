"""Packed sequences: plans, token counting, the packed batch contract, resume, workers."""

import numpy as np
import pytest

from m2dit_jax.data import (
    LatentRecord,
    default_data_config,
    make_dataset,
    packing,
    validate_data_config,
    write_latent_shard,
)
from m2dit_jax.data import synthetic_shapes as ss
from m2dit_jax.data.frame_sampling import FrameRule

FRAME_TOKENS, TEXT_TOKENS = 4, 8  # sample tokens: 3 * 8 + 4 * (6..18 frames) = 48..96


def _config(**kw):
    c = default_data_config()
    c.num_samples = 64
    c.ragged = True
    c.pack_tokens = 512
    c.pack_frame_tokens = FRAME_TOKENS
    c.pack_text_tokens = TEXT_TOKENS
    c.pack_plans = 0  # fresh plans per batch: these tests look at the packer itself
    c.update(kw)
    return c


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def _plan_of(batch, num_scenes=3):
    """The batch's plan from its keys (checking the contract on the way)."""
    sf, scenes = batch["scene_frames"], batch["sample_scenes"]
    b, p = scenes.shape
    assert sf.dtype == np.int32 and scenes.dtype == np.int32
    assert (sf == sf[:1]).all() and (scenes == scenes[:1]).all()  # rows share the plan
    assert (scenes == num_scenes).all() and scenes[0].sum() == sf.shape[1]
    assert batch["pack_fill"].shape == (b,) and batch["pack_fill"].dtype == np.float32
    assert batch["ids"].shape == (b, p) and batch["captions"].shape == sf.shape
    return tuple(
        tuple(int(f) for f in sf[0, j * num_scenes : (j + 1) * num_scenes]) for j in range(p)
    )


# ----------------------------------------------------------------------- plans, token counts
def test_token_counting_and_first_fit():
    spec = packing.PackSpec(100, 4, 8, 3, FrameRule("4k+1", 1, 1, 13))
    assert spec.sample_tokens((1, 5, 13)) == 24 + 4 * (1 + 2 + 4)
    assert spec.padded_tokens() == 24 + 4 * 12  # 3 scenes of max_frames=13 (4 latent each)
    s2d = packing.PackSpec(100, 4, 8, 3, FrameRule("multiple", 2, 2, 6), patch_t=2)
    assert s2d.sample_tokens((2, 4, 6)) == 24 + 4 * 6
    latent = packing.PackSpec(100, 4, 8, 3, None)
    assert latent.sample_tokens((2, 4, 6)) == 24 + 4 * 12
    rule = FrameRule("4k+1", 1, 1, 49)
    frames = np.array(rule.allowed)
    np.testing.assert_array_equal(
        spec.latent_frames(frames), [rule.latent_frames(f) for f in frames]
    )
    # first fit: takes what fits, skips what does not, stops after max_misses misses in a row
    assert packing.first_fit([50, 60, 30, 30], 100, 10) == [0, 2]
    assert packing.first_fit([50, 60, 60, 20], 100, 10, max_misses=2) == [0]
    assert packing.first_fit([95, 3, 3], 100, 10) == [0]  # 5 left < smallest: closed
    # fill rates: a row of two samples of 40 in 100; padded: 40 of a padded 72
    plan = [(2, 2, 2), (2, 2, 2)]
    tok = latent.sample_tokens((2, 2, 2))
    assert packing.pack_fill_rate([plan], latent) == pytest.approx(2 * tok / 100)
    assert packing.padded_fill_rate(plan, latent, longest=4) == pytest.approx(tok / 72)


@pytest.mark.parametrize("budget", [96, 300, 512, 2000])
def test_plans_fit_the_budget_and_are_deterministic(budget):
    config = _config(pack_tokens=budget)
    planner = packing.draw_planner(config, seed=3)
    again = packing.draw_planner(config, seed=3)
    spec = planner.spec
    rule = FrameRule.from_config(config)
    total = 0
    for k in range(0, 700, 7):  # across blocks of PLAN_BLOCK batches
        plan = planner.plan_layouts(k)
        tokens = spec.plan_tokens(plan)
        assert 1 <= len(plan) and tokens <= budget
        assert all(len(lay) == 3 and all(f in rule.allowed for f in lay) for lay in plan)
        assert plan == again.plan_layouts(k)
    for k in range(600):
        assert planner.samples_before(k) == total
        total += len(planner.plan(k))
    other = packing.draw_planner(config, seed=4)
    assert [other.plan(k) for k in range(20)] != [planner.plan(k) for k in range(20)]


def test_bucket_plan_counts_match_a_recount():
    """Per-layout counts before batch k (kept sparsely) equal a plain recount, across the
    stride of stored counts and when asked out of order (a resume)."""
    layouts = [(1, 1, 1), (2, 2, 2), (1, 4, 2), (4, 4, 4)]
    spec = packing.PackSpec(120, 4, 5, 3, None)
    probs = np.array([0.4, 0.3, 0.2, 0.1])
    planner = packing.bucket_planner(layouts, probs, spec, seed=2, block=2)
    n = 2 * packing._ID_STRIDE * 2 + 7  # past two strides of stored counts
    plans = [planner.plan(k) for k in range(n)]
    assert all(spec.plan_tokens(planner.layout_of(i) for i in p) <= 120 for p in plans)
    for k in (n - 1, 3, packing._ID_STRIDE * 2, n - 2, 0, 1):
        want = np.bincount([i for p in plans[:k] for i in p], minlength=4)
        np.testing.assert_array_equal(planner.counts_before(k), want)
        assert planner.samples_before(k) == want.sum()
    with pytest.raises(ValueError, match="'pack_tokens'"):
        packing.bucket_planner(layouts, probs, packing.PackSpec(50, 4, 5, 3, None), seed=0)


def test_processes_share_the_plans():
    a, b = (
        make_dataset(_config(), seed=1, process_index=p, process_count=2, batch_size=1)
        for p in range(2)
    )
    for _ in range(3):
        x, y = next(a), next(b)
        np.testing.assert_array_equal(x["scene_frames"], y["scene_frames"])
        assert not set(x["ids"].reshape(-1).tolist()) & set(y["ids"].reshape(-1).tolist())


def test_token_budget_shortens_candidates():
    config = _config(token_budget=10)
    planner = packing.draw_planner(config, seed=0)
    for k in range(50):
        assert all(sum(lay) <= 10 for lay in planner.plan_layouts(k))


# ----------------------------------------------------------------------- batch contract
def test_packed_batch_contract_and_samples_are_the_unpacked_ones():
    config = _config(text_encoder="hashed")
    source = ss.SyntheticShapesSource(64, 3, ss.ShapesGeometry(frames=6), seed=0)
    spec = packing.PackSpec.from_config(config)
    plans = set()
    for batch in _take(make_dataset(config, seed=1, batch_size=2), 4):
        plan = _plan_of(batch)
        plans.add(plan)
        p = len(plan)
        assert p >= 4 and batch["video"].shape[1] == sum(map(sum, plan))
        assert batch["text_embeds"].shape == (2, p * 3 * 8, 32)
        assert batch["text_mask"].shape == (2, p * 3 * 8)
        assert batch["attrs_colour"].shape == (2, p * 3) and batch["attrs_shape"].shape == (2, p)
        np.testing.assert_allclose(batch["pack_fill"], spec.plan_tokens(plan) / 512)
        assert len(set(batch["ids"].reshape(-1).tolist())) == 2 * p  # no sample twice
        for row in range(2):
            start = 0
            for j, layout in enumerate(plan):
                alone = source.sample(batch["ids"][row, j], layout)
                np.testing.assert_array_equal(
                    batch["video"][row, start : start + sum(layout)], alone["video"]
                )
                np.testing.assert_array_equal(
                    batch["captions"][row, 3 * j : 3 * j + 3], alone["captions"]
                )
                start += sum(layout)
    assert len(plans) == 4


def test_packed_space_to_depth_latents():
    config = _config(video_encoder="space_to_depth", patch_t=2, patch_s=4, pack_frame_tokens=16)
    batch = next(make_dataset(config, seed=0, batch_size=2))
    pixel = batch["video_scene_frames"]
    np.testing.assert_array_equal(batch["scene_frames"], pixel // 2)
    assert batch["latents"].shape[1] == batch["scene_frames"][0].sum()
    spec = packing.PackSpec.from_config(config)
    plan = [tuple(pixel[0, i : i + 3]) for i in range(0, pixel.shape[1], 3)]
    assert spec.plan_tokens(plan) <= 512
    np.testing.assert_allclose(batch["pack_fill"], spec.plan_tokens(plan) / 512)


def test_fill_rate_packed_vs_padded():
    """Budget ~10 mean samples: packing fills >= 95% of the row, equal-length padding ~75%."""
    config = _config(pack_tokens=768)
    rates = packing.simulate_fill_rates(config, seed=0, num_batches=512)
    print(f"fill rates: {rates}")
    assert rates["packed"] >= 0.95 and rates["padded"] < 0.8
    # The pipeline's pack_fill is what the plans say.
    batches = _take(make_dataset(config, seed=0, batch_size=1), 6)
    planner = packing.draw_planner(config, seed=0)
    want = [packing.pack_fill_rate([planner.plan_layouts(k)], planner.spec) for k in range(6)]
    np.testing.assert_allclose([b["pack_fill"][0] for b in batches], want, rtol=1e-6)


# ----------------------------------------------------------------------- resume, workers
def test_resume_is_exact_and_epochs_use_every_sample():
    config = _config()
    it = make_dataset(config, seed=4, batch_size=2)
    _take(it, 3)
    state = it.get_state()
    expected = _take(it, 3)
    resumed = make_dataset(config, seed=4, batch_size=2)
    resumed.set_state(state)
    _same(expected, _take(resumed, 3))
    # One epoch: whole packed batches of distinct samples, at most num_samples of them.
    one = list(make_dataset(_config(num_epochs=1, num_samples=40), seed=0, batch_size=2))
    ids = np.concatenate([b["ids"].reshape(-1) for b in one])
    assert len(ids) == len(set(ids.tolist())) and len(ids) <= 40 and len(ids) > 40 - 2 * 10


def test_workers_give_the_same_batches():
    inline = _take(make_dataset(_config(), seed=5, batch_size=2), 4)
    it = make_dataset(_config(num_workers=2), seed=5, batch_size=2)
    try:
        workers = _take(it, 4)
    finally:
        it.close()
    _same(inline, workers)


# ----------------------------------------------------------------------- bucketed sources
def _latent_record(i, frames, rng, scenes=3, text=5):
    return LatentRecord(
        id=f"r{i}",
        captions=[f"c{i}.{s}" for s in range(scenes)],
        latents=rng.standard_normal((sum(frames), 2, 2, 4)).astype(np.float16),
        text_embeds=rng.standard_normal((scenes, text, 6)).astype(np.float32),
        text_mask=np.ones((scenes, text), bool),
        scene_frames=frames,
    )


def test_packed_latents_buckets(tmp_path):
    rng = np.random.default_rng(1)
    layouts = [(3, 1, 2), (2, 2, 2), (1, 1, 4), (4, 4, 4)]
    records = [_latent_record(i, layouts[i % 4], rng) for i in range(24)]
    write_latent_shard(tmp_path / "s.array_record-00000", records)
    by_id = {r.id: r for r in records}
    config = _config(source="latents", path=str(tmp_path), pack_tokens=150, pack_text_tokens=5)
    it = make_dataset(config, seed=0, batch_size=2)
    spec = packing.PackSpec.from_config(config)
    seen, counts = set(), {}
    for batch in _take(it, 8):
        plan = _plan_of(batch)
        assert spec.plan_tokens(plan) <= 150
        assert batch["text_embeds"].shape == (2, len(plan) * 15, 6)
        for row in range(2):
            start = 0
            for j, layout in enumerate(plan):
                record = by_id[batch["ids"][row, j]]
                assert record.scene_frames == layout
                np.testing.assert_array_equal(
                    batch["latents"][row, start : start + sum(layout)],
                    record.concatenated_latents(),
                )
                np.testing.assert_array_equal(
                    batch["text_embeds"][row, 15 * j : 15 * (j + 1)],
                    record.text_embeds.reshape(15, 6),
                )
                start += sum(layout)
                counts[record.id] = counts.get(record.id, 0) + 1
            seen.update(plan)
    assert seen == set(layouts)
    # Each layout's stream: a layout's records repeat only after all of them were used.
    for lay in layouts:
        used = [counts.get(r.id, 0) for r in records if r.scene_frames == lay]
        assert max(used) - min(used) <= 1
    state = it.get_state()
    expected = _take(it, 2)
    resumed = make_dataset(config, seed=0, batch_size=2)
    resumed.set_state(state)
    _same(expected, _take(resumed, 2))
    with pytest.raises(ValueError, match="'pack_text_tokens'"):
        make_dataset(_config(source="latents", path=str(tmp_path)), seed=0, batch_size=1)
    with pytest.raises(ValueError, match="'pack_tokens'.*\\(4, 4, 4\\)"):
        make_dataset(
            _config(source="latents", path=str(tmp_path), pack_tokens=40, pack_text_tokens=5),
            seed=0,
            batch_size=1,
        )


# ----------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "change, field",
    [
        (dict(ragged=False), "pack_tokens"),
        (dict(pack_frame_tokens=0), "pack_frame_tokens"),
        (dict(pack_tokens=-1), "pack_tokens"),
        (dict(pack_text_tokens=-2), "pack_text_tokens"),
        (dict(pack_tokens=95), "pack_tokens"),  # the longest sample takes 24 + 4 * 18 = 96
        (dict(frame_rule="4k+1", min_frames=1, max_frames=13, pack_tokens=63), "pack_tokens"),
    ],
)
def test_bad_packing_config_names_the_field(change, field):
    with pytest.raises(ValueError, match=f"'{field}'"):
        validate_data_config(_config(**change))


def test_packing_off_is_unchanged():
    config = _config(pack_tokens=0, pack_frame_tokens=0)
    validate_data_config(config)
    batch = next(make_dataset(config, seed=0, batch_size=2))
    assert "sample_scenes" not in batch and "pack_fill" not in batch
    assert batch["ids"].shape == (2,)
    validate_data_config(_config(frame_rule="4k+1", min_frames=1, max_frames=13, pack_tokens=72))
    old = default_data_config()
    for field in ("pack_tokens", "pack_frame_tokens", "pack_text_tokens"):
        del old[field]
    validate_data_config(old)  # configs saved before packing existed


# ----------------------------------------------------------------------- manifest
def test_packed_manifest_stage1_and_stage2(tmp_path):
    import json

    from m2dit_jax.data.video_io import write_mp4

    frames = np.broadcast_to((np.arange(48) * 5)[:, None, None, None], (48, 16, 16, 3))
    write_mp4(str(tmp_path / "film.mp4"), frames.astype(np.uint8), fps=10)
    shots = [
        {"start": 0.0, "end": 1.2, "caption": "zero"},
        {"start": 1.2, "end": 2.0, "caption": "one"},
        {"start": 2.0, "end": 3.6, "caption": "two"},
        {"start": 3.6, "end": 4.8, "caption": "three"},
    ]
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"video": "film.mp4", "shots": shots}) + "\n")
    common = dict(source="manifest", path=str(path), num_scenes=2, height=16, width=16)
    # stage 1: every shot is a clip, a sample is 2 of them, the plan draws their lengths
    config = _config(stage=1, stage1_stride=1, pack_tokens=128, **common)
    for batch in _take(make_dataset(config, seed=0, batch_size=2), 2):
        plan = _plan_of(batch, num_scenes=2)
        assert len(plan) >= 2 and packing.PackSpec.from_config(config).plan_tokens(plan) <= 128
        assert batch["video"].shape[1] == sum(map(sum, plan))
    # stage 2: windows of 2 consecutive shots keep their lengths (6, 4), (4, 6), (6, 6)
    config = _config(stage=2, fps=5.0, pack_tokens=128, **common)
    seen = set()
    for batch in _take(make_dataset(config, seed=0, batch_size=1), 3):
        plan = _plan_of(batch, num_scenes=2)
        seen.update(plan)
        assert packing.PackSpec.from_config(config).plan_tokens(plan) <= 128
    assert seen <= {(6, 4), (4, 6), (6, 6)} and len(seen) >= 2


def test_plan_vocabulary_bounds_the_compiled_layouts():
    config = _config(pack_tokens=768, pack_plans=6)
    planner = packing.draw_planner(config, seed=3, vocabulary=6)
    plans = {planner.plan_layouts(k) for k in range(600)}
    assert len(plans) <= 6 and planner.distinct_plans() == 6
    spec = packing.PackSpec.from_config(config)
    fill = packing.pack_fill_rate([planner.plan_layouts(k) for k in range(600)], spec)
    assert fill >= 0.95
    got = {_plan_of(b) for b in _take(make_dataset(config, seed=3, batch_size=1), 12)}
    assert len(got) <= 6
