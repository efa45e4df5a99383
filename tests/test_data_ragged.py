"""Ragged scenes: per-scene frame counts, frame rules, bucketing, manifests, latents, encode."""

import json

import msgpack
import numpy as np
import pytest

from m2dit_jax.data import (
    LatentRecord,
    decode_record,
    default_data_config,
    encode_record,
    make_dataset,
    validate_data_config,
    write_latent_shard,
)
from m2dit_jax.data import latents_format as lf
from m2dit_jax.data import synthetic_shapes as ss
from m2dit_jax.data.frame_sampling import FrameRule
from m2dit_jax.data.pipeline import EncodeStage
from m2dit_jax.data.video_io import write_mp4
from m2dit_jax.encoders.pixel import SpaceToDepthAutoencoder

FPS = 10
LEVEL = 5  # frame k is a flat grey frame of value LEVEL * k: decoded frames reveal their index


def _frames(n, h=24, w=32):
    idx = np.arange(n)
    return np.broadcast_to((idx * LEVEL)[:, None, None, None], (n, h, w, 3)).astype(np.uint8)


def _index_of(frames):
    return np.round(frames.reshape(len(frames), -1).mean(-1) / LEVEL).astype(int)


def _config(**kw):
    c = default_data_config()
    c.num_samples = 64
    c.ragged = True
    c.update(kw)
    return c


def _take(it, n):
    return [next(it) for _ in range(n)]


def _check_batch(batch, key="video"):
    sf = batch["scene_frames"]
    assert sf.dtype == np.int32 and sf.shape == (len(batch[key]), batch["captions"].shape[1])
    assert (sf == sf[:1]).all()  # one layout per batch
    assert sf[0].sum() == batch[key].shape[1]  # matches the frame axis
    return tuple(int(f) for f in sf[0])


# ----------------------------------------------------------------------- frame rules, config
def test_frame_rules_clamping_and_budget():
    mult = FrameRule("multiple", 2, 2, 6)
    assert mult.allowed == (2, 4, 6) and mult.round_down(5) == 4 and mult.round_down(1) == 0
    assert [mult.clamp(n) for n in (1, 2, 3, 7, 100)] == [None, 2, 2, 6, 6]
    cog = FrameRule("4k+1", 1, 5, 13)
    assert cog.allowed == (5, 9, 13) and cog.round_down(12) == 9
    assert [cog.clamp(n) for n in (4, 5, 8, 49)] == [None, 5, 5, 13]
    assert cog.latent_frames(13) == 4 and mult.latent_frames(6, patch_t=2) == 3
    assert cog.for_duration(1.2, 10) == 9 and cog.for_duration(0.45, 10) is None
    budget = FrameRule("multiple", 1, 2, 6, token_budget=10)
    assert budget.fit_budget((6, 6, 2)) == (4, 4, 2)  # the longest (first on ties) shrinks
    assert budget.fit_budget((3, 3, 2)) == (3, 3, 2)
    assert FrameRule("4k+1", 1, 1, 13, token_budget=20).fit_budget((13, 13)) == (9, 9)
    rng = np.random.default_rng(0)
    drawn = {budget.draw(rng, 3) for _ in range(200)}
    assert len(drawn) > 20 and all(sum(d) <= 10 and min(d) >= 2 for d in drawn)


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(frame_rule="4k+1", min_frames=2, max_frames=9), "min_frames"),
        (dict(min_frames=5, max_frames=4), "max_frames"),
        (dict(video_encoder="space_to_depth", patch_t=2, min_frames=3), "min_frames"),
        (dict(video_encoder="space_to_depth", frame_rule="4k+1", min_frames=1), "frame_rule"),
        (dict(frame_rule="5k"), "frame_rule"),
        (dict(token_budget=5), "token_budget"),
        (dict(source="tfds", path="x"), "ragged"),
        (dict(source="manifest", path="x", stage=2), "fps"),
        (dict(ragged=False, token_budget=20), "token_budget"),
    ],
)
def test_bad_ragged_config_names_the_field(change, field):
    with pytest.raises(ValueError, match=f"'{field}'"):
        validate_data_config(_config(**change))


# ----------------------------------------------------------------------- synthetic_shapes
def test_synthetic_batches_are_bucketed_and_layouts_vary():
    it = make_dataset(_config(), seed=0, batch_size=3)
    layouts = set()
    for batch in _take(it, 12):
        layout = _check_batch(batch)
        assert all(2 <= f <= 6 for f in layout)
        layouts.add(layout)
    assert len(layouts) >= 8  # 5**3 = 125 possible layouts


def test_synthetic_scene_is_a_prefix_whatever_the_batch():
    geometry = ss.ShapesGeometry(frames=6)  # ragged: rendered at max_frames, then cut
    source = ss.SyntheticShapesSource(64, 3, geometry, seed=0)
    long, short = source.sample(4, (6, 6, 6)), source.sample(4, (2, 5, 3))
    assert short["video"].shape[0] == 10 and list(short["scene_frames"]) == [2, 5, 3]
    starts = (0, 2, 7)
    for i, f in enumerate((2, 5, 3)):
        np.testing.assert_array_equal(
            short["video"][starts[i] : starts[i] + f], long["video"][6 * i : 6 * i + f]
        )
    for key in ("captions", "attrs_colour", "attrs_motion", "attrs_shape", "attrs_background"):
        np.testing.assert_array_equal(short[key], long[key])
    # The pipeline renders a sample with its batch's layout: the same as rendering it alone.
    for batch in _take(make_dataset(_config(), seed=1, batch_size=2), 3):
        layout = _check_batch(batch)
        for row, ident in enumerate(batch["ids"]):
            np.testing.assert_array_equal(
                batch["video"][row], source.sample(ident, layout)["video"]
            )


def test_token_budget_caps_every_sample():
    it = make_dataset(_config(token_budget=10), seed=0, batch_size=2)
    for batch in _take(it, 10):
        layout = _check_batch(batch)
        assert sum(layout) <= 10 and batch["video"].shape[1] <= 10


def test_equal_range_gives_the_equal_batches():
    """ragged with min_frames = max_frames = frames renders exactly the equal batches."""
    equal = _take(make_dataset(_config(ragged=False), seed=2, batch_size=2), 3)
    ragged = _take(make_dataset(_config(min_frames=4, max_frames=4), seed=2, batch_size=2), 3)
    for a, b in zip(equal, ragged):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        assert (a["scene_frames"] == 4).all()


def test_encode_stage_encodes_each_scene_alone():
    config = _config(video_encoder="space_to_depth", patch_t=2, patch_s=4)
    batch = next(make_dataset(config, seed=3, batch_size=2))
    pixel = batch["video_scene_frames"][0]
    assert all(f in (2, 4, 6) for f in pixel)
    np.testing.assert_array_equal(batch["scene_frames"], batch["video_scene_frames"] // 2)
    assert batch["latents"].shape[1] == batch["scene_frames"][0].sum()
    enc = SpaceToDepthAutoencoder(2, 4)
    p0 = l0 = 0
    for f in pixel:
        alone = enc.encode(batch["video"][:, p0 : p0 + f])
        np.testing.assert_array_equal(batch["latents"][:, l0 : l0 + f // 2], alone)
        p0, l0 = p0 + f, l0 + f // 2
    # A batch that mixes layouts is refused.
    bad = {
        "video": np.zeros((2, 6, 8, 8, 3), np.uint8),
        "scene_frames": np.array([[2, 4], [4, 2]], np.int32),
    }
    stage = EncodeStage(_config(num_scenes=2, video_encoder="space_to_depth", patch_t=2))
    with pytest.raises(ValueError, match="mixes scene layouts"):
        stage(bad)


def test_resume_is_exact_with_drawn_layouts():
    it = make_dataset(_config(), seed=4, batch_size=2)
    _take(it, 3)
    state = it.get_state()
    expected = _take(it, 3)
    resumed = make_dataset(_config(), seed=4, batch_size=2)
    resumed.set_state(state)
    for x, y in zip(expected, _take(resumed, 3)):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


# ----------------------------------------------------------------------- manifest
@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("ragged_media")
    write_mp4(str(root / "film.mp4"), _frames(48), fps=FPS)  # 4.8 s
    for i in range(4):
        write_mp4(str(root / f"clip{i}.mp4"), _frames(30), fps=FPS)
    return root


# At fps=5 (every 2nd source frame): 6, 4, 8 -> max_frames 6, 6 frames; the 0.2 s shot: 1 < 2.
FILM = [
    {"start": 0.0, "end": 1.2, "caption": "zero"},
    {"start": 1.2, "end": 2.0, "caption": "one"},
    {"start": 2.0, "end": 3.6, "caption": "two"},
    {"start": 3.6, "end": 4.8, "caption": "three"},
]
SHORT = [
    {"start": 0.0, "end": 1.0, "caption": "long enough"},
    {"start": 1.0, "end": 1.2, "caption": "too short"},
    {"start": 1.2, "end": 2.4, "caption": "fine"},
]


def _manifest(root, lines, name):
    path = root / name
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return str(path)


def _manifest_config(path, **kw):
    return _config(source="manifest", path=path, num_scenes=2, height=16, width=16, **kw)


def test_manifest_stage2_keeps_shot_lengths(media):
    path = _manifest(
        media,
        [{"video": "film.mp4", "shots": FILM}, {"video": "film.mp4", "shots": SHORT}],
        "film.jsonl",
    )
    config = _manifest_config(path, stage=2, fps=5.0)
    it = make_dataset(config, seed=0, batch_size=1)
    # Windows of 2 shots: (6, 4), (4, 6), (6, 6); SHORT's 0.2 s shot is dropped and counted,
    # so neither of its windows exists.
    assert it.skip_counts()["too_short"] == 1
    by_caption = {s["caption"]: s for s in FILM}
    layouts = set()
    for batch in _take(it, 12):
        layout = _check_batch(batch)
        layouts.add(layout)
        start = 0
        for caption, f in zip(batch["captions"][0], layout):
            shot = by_caption[caption]
            found = _index_of(batch["video"][0, start : start + f])
            start += f
            assert np.all(np.diff(found) == 2), found  # 10 fps source sampled at 5 fps
            assert round(shot["start"] * FPS) <= found[0] and found[-1] < round(shot["end"] * FPS)
            assert f == min(6, int(round((shot["end"] - shot["start"]) * 5)))
    assert layouts == {(6, 4), (4, 6), (6, 6)}
    with pytest.raises(ValueError, match="too_short"):
        make_dataset(_manifest_config(path, stage=2, fps=5.0, strict=True), seed=0, batch_size=1)


def test_manifest_stage2_buckets_batches_and_resumes(media):
    films = [{"video": "film.mp4", "shots": FILM}] * 3
    path = _manifest(media, films, "films.jsonl")
    config = _manifest_config(path, stage=2, fps=5.0)
    it = make_dataset(config, seed=1, batch_size=2)
    _take(it, 2)
    state = it.get_state()
    expected = _take(it, 3)
    for batch in expected:
        _check_batch(batch)
    resumed = make_dataset(config, seed=1, batch_size=2)
    resumed.set_state(state)
    for x, y in zip(expected, _take(resumed, 3)):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    # Two processes agree on every step's layout (one global batch, one layout).
    a, b = (
        make_dataset(config, seed=1, process_index=p, process_count=2, batch_size=1)
        for p in range(2)
    )
    for _ in range(4):
        np.testing.assert_array_equal(next(a)["scene_frames"], next(b)["scene_frames"])


def test_manifest_stage1_draws_clip_lengths(media):
    lines = [{"video": f"clip{i}.mp4", "caption": f"c{i}"} for i in range(4)]
    path = _manifest(media, lines, "clips.jsonl")
    it = make_dataset(_manifest_config(path, stage=1), seed=0, batch_size=2)
    layouts = set()
    for batch in _take(it, 4):
        layout = _check_batch(batch)
        layouts.add(layout)
        start = 0
        for f in layout:
            found = _index_of(batch["video"][0, start : start + f])
            assert np.all(np.diff(found) == 3)  # stage1_stride
            start += f
    assert len(layouts) > 1


# ----------------------------------------------------------------------- latents
def _latent_record(i, frames, rng, scenes=3):
    mask = np.zeros((scenes, 5), bool)
    mask[:, :2] = True
    return LatentRecord(
        id=f"r{i}",
        captions=[f"c{s}" for s in range(scenes)],
        latents=rng.standard_normal((sum(frames), 4, 4, 8)).astype(np.float16),
        text_embeds=rng.standard_normal((scenes, 5, 6)).astype(np.float32),
        text_mask=mask,
        scene_frames=frames,
    )


def test_ragged_record_round_trip_and_old_records():
    rng = np.random.default_rng(0)
    r = _latent_record(0, (3, 1, 2), rng)
    assert r.is_ragged and r.num_scenes == 3 and r.latents.shape == (6, 4, 4, 8)
    back = decode_record(encode_record(r))
    assert back.scene_frames == (3, 1, 2) and back.is_ragged
    np.testing.assert_array_equal(back.latents, r.latents)
    np.testing.assert_array_equal(back.scene_latents(2), r.latents[4:6])
    assert lf.record_scene_frames(encode_record(r)) == (3, 1, 2)
    # Equal counts are stored 5-D, as before.
    eq = _latent_record(1, (2, 2, 2), rng)
    assert not eq.is_ragged and eq.latents.shape == (3, 2, 4, 4, 8)
    # The per-scene counts are validated.
    with pytest.raises(lf.LatentFormatError, match="sum to 5"):
        LatentRecord(
            "x",
            ["a"] * 3,
            np.zeros((6, 4, 4, 8), np.float16),
            np.zeros((3, 5, 6), np.float32),
            eq.text_mask,
            scene_frames=(3, 1, 1),
        )
    with pytest.raises(lf.LatentFormatError, match="disagree"):
        LatentRecord(
            "x", ["a"] * 3, eq.latents, eq.text_embeds, eq.text_mask, scene_frames=(2, 2, 3)
        )
    # A version-1 record (no scene_frames) still reads.
    obj = msgpack.unpackb(encode_record(eq), raw=False)
    obj["version"] = 1
    del obj["scene_frames"]
    old = msgpack.packb(obj, use_bin_type=True)
    assert decode_record(old).scene_frames == (2, 2, 2)
    assert lf.record_scene_frames(old) == (2, 2, 2)
    # A version-2 record without scene_frames is malformed.
    obj["version"] = 2
    with pytest.raises(lf.LatentFormatError, match="scene_frames"):
        decode_record(msgpack.packb(obj, use_bin_type=True))


def test_latents_source_buckets_ragged_records(tmp_path):
    rng = np.random.default_rng(1)
    layouts = [(3, 1, 2), (2, 2, 2), (1, 1, 4)]
    records = [_latent_record(i, layouts[i % 3], rng) for i in range(12)]
    write_latent_shard(tmp_path / "s.array_record-00000", records)
    config = _config(source="latents", path=str(tmp_path))
    it = make_dataset(config, seed=0, batch_size=2)
    seen = set()
    by_id = {r.id: r for r in records}
    for batch in _take(it, 10):
        layout = _check_batch(batch, key="latents")
        seen.add(layout)
        for row, ident in enumerate(batch["ids"]):
            assert by_id[ident].scene_frames == layout
            np.testing.assert_array_equal(
                batch["latents"][row], by_id[ident].concatenated_latents()
            )
    assert seen == set(layouts)
    state = it.get_state()
    expected = _take(it, 2)
    resumed = make_dataset(config, seed=0, batch_size=2)
    resumed.set_state(state)
    for x, y in zip(expected, _take(resumed, 2)):
        np.testing.assert_array_equal(x["latents"], y["latents"])
    # Without ragged=True the ragged records are skipped as bad records (equal ones read).
    equal = make_dataset(
        _config(ragged=False, source="latents", path=str(tmp_path), num_epochs=1),
        seed=0,
        batch_size=1,
    )
    batches = list(equal)
    assert all(b["ids"][0] in {r.id for r in records[1::3]} for b in batches)
    assert equal.skip_counts()["bad_record"] >= 1
    # A record of the wrong scene count is skipped and counted, or with strict=True an error
    two = _latent_record(99, (1, 2), np.random.default_rng(1), scenes=2)
    write_latent_shard(tmp_path / "s.array_record-00001", [two])
    lenient = make_dataset(config, seed=0, batch_size=2)
    assert lenient.skip_counts()["bad_record"] == 1
    with pytest.raises(ValueError, match="latents record .*2 scenes, num_scenes=3"):
        make_dataset(_config(source="latents", path=str(tmp_path), strict=True), seed=0,
                     batch_size=2)  # fmt: skip


# ----------------------------------------------------------------------- precompute
def test_precompute_writes_ragged_records(tmp_path):
    import jax

    from launch.precompute import PrecomputeOptions, precompute
    from m2dit_jax.data import read_latent_shard
    from m2dit_jax.encoders.text import HashedWordEncoder
    from m2dit_jax.encoders.vae import CogVideoXVAE, VAEConfig, pixels_to_unit

    vae = CogVideoXVAE(
        VAEConfig(
            block_out_channels=(8, 8, 8, 8),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            scaling_factor=0.7,
        ),
        seed=0,
    )
    cfg = _config(
        num_scenes=2,
        num_samples=4,
        height=16,
        width=16,
        holdout_fraction=0.0,
        frame_rule="4k+1",
        min_frames=1,
        max_frames=5,
    )
    out = str(tmp_path / "latents")
    options = PrecomputeOptions(samples_per_shard=4, batch_size=2, seed=5)
    text = HashedWordEncoder(4, 8, 0)
    precompute(cfg, out, vae=vae, text_encoder=text, options=options)
    records = list(read_latent_shard(f"{out}/latents-00000-of-00001.array_record"))
    assert len(records) == 4
    layouts = {r.scene_frames for r in records}
    assert all(set(layout) <= {1, 2} for layout in layouts)  # 1 or 5 pixel frames -> 1 or 2
    assert records[1].is_ragged and records[1].scene_frames == (1, 2)  # pixel (1, 5)
    # Each scene was encoded alone: re-encode sample i's scenes here.
    from m2dit_jax.data.pipeline import build_source

    source = build_source(cfg, process_index=0, process_count=1)
    encode = jax.jit(vae.encode)
    for i, r in enumerate(records[:2]):
        layout_rng = np.random.default_rng([options.seed, i, 0x4A66])
        pixel = FrameRule.from_config(cfg).draw(layout_rng, 2)
        sample = source.load([i], np.random.default_rng([options.seed, i]), scene_frames=pixel)
        start = 0
        for s, f in enumerate(pixel):
            clip = pixels_to_unit(sample["video"][None, start : start + f])
            np.testing.assert_allclose(r.scene_latents(s), encode(clip)[0], atol=1e-5)
            start += f
    # The training pipeline buckets the ragged records.
    it = make_dataset(_config(source="latents", path=out, num_scenes=2), seed=0, batch_size=1)
    for batch in _take(it, 4):
        assert _check_batch(batch, key="latents") in layouts


def test_bucketed_batches_are_the_same_with_worker_processes(tmp_path):
    rng = np.random.default_rng(2)
    records = [_latent_record(i, [(3, 1, 2), (2, 2, 2)][i % 2], rng) for i in range(8)]
    write_latent_shard(tmp_path / "s.array_record-00000", records)
    inline = _take(
        make_dataset(_config(source="latents", path=str(tmp_path)), seed=5, batch_size=2), 4
    )
    it = make_dataset(
        _config(source="latents", path=str(tmp_path), num_workers=2), seed=5, batch_size=2
    )
    try:
        workers = _take(it, 4)
    finally:
        it.close()
    for x, y in zip(inline, workers):
        np.testing.assert_array_equal(x["latents"], y["latents"])
        np.testing.assert_array_equal(x["scene_frames"], y["scene_frames"])
