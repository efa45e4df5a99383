"""make_dataset: determinism, exact resume, per-process sharding, cond, encoders, latents."""

import grain
import numpy as np
import pytest

from m2dit_jax.data import (
    LatentRecord,
    default_data_config,
    make_dataset,
    validate_data_config,
    write_latent_shard,
)
from m2dit_jax.encoders.pixel import SpaceToDepthAutoencoder


def _config(**kw):
    c = default_data_config()
    c.num_samples = 64
    c.update(kw)
    return c


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_synthetic_batch_shapes_and_dtypes():
    batch = next(make_dataset(_config(), seed=0, batch_size=4))
    expected = {
        "video": ((4, 12, 16, 16, 3), np.uint8),
        "scene_frames": ((4, 3), np.int32),  # frames per scene on the video's frame axis
        "captions": ((4, 3), object),
        "ids": ((4,), np.int64),
        "attrs_colour": ((4, 3), np.int32),
        "attrs_motion": ((4, 3), np.int32),
        "attrs_shape": ((4,), np.int32),
        "attrs_background": ((4,), np.int32),
    }
    # No `cond`: mask 2 is sampled by the objective (diffusion.p_cond), not by the loader.
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected


def test_same_seed_same_batches_other_seed_other_order():
    a = [b["ids"] for b in _take(make_dataset(_config(), seed=5, batch_size=4), 6)]
    b = [b["ids"] for b in _take(make_dataset(_config(), seed=5, batch_size=4), 6)]
    c = [b["ids"] for b in _take(make_dataset(_config(), seed=6, batch_size=4), 6)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_epochs_cover_everything_and_reshuffle():
    it = make_dataset(_config(num_samples=16), seed=0, batch_size=4)
    epochs = [np.concatenate([b["ids"] for b in _take(it, 4)]) for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(16))
    assert not np.array_equal(epochs[0], epochs[1])


def test_exact_resume_mid_epoch_and_through_orbax(tmp_path):
    import orbax.checkpoint as ocp

    it = make_dataset(_config(), seed=2, batch_size=4)
    _take(it, 5)
    state = it.get_state()
    expected = _take(it, 4)
    resumed = make_dataset(_config(), seed=2, batch_size=4)
    resumed.set_state(state)
    for x, y in zip(expected, _take(resumed, 4)):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    # The trainer's path: grain's orbax handler.
    ckpt = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
    ckpt.save(tmp_path / "it", args=grain.checkpoint.CheckpointSave(resumed))
    after = next(resumed)
    fresh = make_dataset(_config(), seed=2, batch_size=4)
    ckpt.restore(tmp_path / "it", args=grain.checkpoint.CheckpointRestore(fresh))
    np.testing.assert_array_equal(next(fresh)["video"], after["video"])


def test_two_processes_cover_the_data_once_without_overlap():
    config = _config(num_samples=40, num_epochs=1)
    seen = []
    for process in range(2):
        it = make_dataset(config, seed=3, process_index=process, process_count=2, batch_size=4)
        ids = np.concatenate([b["ids"] for b in it])
        assert len(ids) == 20 and all(i % 2 == process for i in ids)  # reads only its share
        seen.append(ids)
    assert sorted(np.concatenate(seen)) == list(range(40))


def test_same_batches_with_worker_processes():
    inline = [b["video"] for b in _take(make_dataset(_config(), seed=4, batch_size=2), 5)]
    it = make_dataset(_config(num_workers=2), seed=4, batch_size=2)
    try:
        workers = [b["video"] for b in _take(it, 5)]
    finally:
        it.close()
    for x, y in zip(inline, workers):
        np.testing.assert_array_equal(x, y)


def test_data_p_cond_is_refused_with_the_field_that_replaced_it():
    config = _config()
    config.p_cond = 0.5
    with pytest.raises(ValueError, match="diffusion.p_cond"):
        validate_data_config(config)


def test_encode_stage_adds_text_and_latents():
    config = _config(text_encoder="hashed", text_len=8, text_dim=16)
    config.update(video_encoder="space_to_depth", patch_t=2, patch_s=4)
    batch = next(make_dataset(config, seed=0, batch_size=2))
    assert batch["text_embeds"].shape == (2, 24, 16) and batch["text_embeds"].dtype == np.float32
    assert batch["text_mask"].shape == (2, 24) and batch["text_mask"][:, 0].all()
    assert batch["latents"].shape == (2, 6, 4, 4, 96)
    scenes = batch["latents"].reshape(6, 2, 4, 4, 96)
    decoded = SpaceToDepthAutoencoder(2, 4).decode(scenes).reshape(2, 12, 16, 16, 3)
    np.testing.assert_array_equal(decoded, batch["video"])
    config.detail_scale = 3.0  # the same clips, detail coefficients scaled
    scaled = next(make_dataset(config, seed=0, batch_size=2))
    ae = SpaceToDepthAutoencoder(2, 4, detail_scale=3.0)
    np.testing.assert_array_equal(scaled["video"], batch["video"])
    np.testing.assert_allclose(scaled["latents"], ae.encode(batch["video"]), atol=1e-6)


def test_latents_source(tmp_path):
    rng = np.random.default_rng(0)
    mask = np.zeros((3, 5), bool)
    mask[:, :2] = True

    def record(i):
        return LatentRecord(
            id=f"r{i}",
            captions=["a", "b", "c"],
            latents=rng.standard_normal((3, 2, 4, 4, 8)).astype(np.float16),
            text_embeds=rng.standard_normal((3, 5, 6)).astype(np.float32),
            text_mask=mask,
        )

    write_latent_shard(tmp_path / "s.array_record-00000", [record(i) for i in range(5)])
    odd = LatentRecord(
        "odd",
        ["a", "b"],
        np.zeros((2, 2, 4, 4, 8), np.float16),
        np.zeros((2, 5, 6), np.float32),
        mask[:2],
    )
    write_latent_shard(tmp_path / "s.array_record-00001", [record(5), odd])
    config = _config(source="latents", path=str(tmp_path), num_epochs=1)
    it = make_dataset(config, seed=0, batch_size=2)
    batches = list(it)
    assert len(batches) == 3
    b = batches[0]
    assert b["latents"].shape == (2, 6, 4, 4, 8) and b["latents"].dtype == np.float16
    assert b["text_embeds"].shape == (2, 15, 6) and b["text_mask"].shape == (2, 15)
    assert b["captions"].shape == (2, 3) and b["ids"].dtype == object
    assert "odd" not in np.concatenate([x["ids"] for x in batches])
    assert it.skip_counts()["bad_record"] == 1


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(source="webdataset"), "source"),
        (dict(stage=3), "stage"),
        (dict(source="manifest"), "path"),
        (dict(video_encoder="space_to_depth", patch_s=3), "patch_s"),
        (dict(video_encoder="space_to_depth", detail_scale=0.0), "detail_scale"),
        (dict(detail_scale=2.0), "detail_scale"),
        (dict(source="latents", path="x", text_encoder="hashed"), "text_encoder"),
    ],
)
def test_bad_config_names_the_field(change, field):
    with pytest.raises(ValueError, match=f"'{field}'"):
        validate_data_config(_config(**change))
    with pytest.raises(ValueError, match="batch_size"):
        make_dataset(_config(), seed=0, batch_size=0)
