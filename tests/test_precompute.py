"""launch.precompute: tiny random VAE + T5 -> latents shards -> resume -> stats -> train."""

import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from launch.precompute import PrecomputeOptions, precompute, shard_name
from m2dit_jax.data import default_data_config, read_latent_shard
from m2dit_jax.data.bad_input import BadSample
from m2dit_jax.encoders.t5 import T5Config, T5Encoder, T5TextEncoder, save_t5_encoder
from m2dit_jax.encoders.vae import (
    CogVideoXVAE,
    VAEConfig,
    load_diffusers_vae,
    pixels_to_unit,
    save_diffusers_vae,
)

SCENES, FRAMES, SIZE, TEXT_LEN = 2, 9, 32, 16


def _spiece(folder):
    import sentencepiece as spm

    words = "red blue green circle square triangle moves left right up down a the".split()
    sentences = [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 10
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=proto,
        vocab_size=40,
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        minloglevel=2,
    )
    folder.mkdir(parents=True)
    (folder / "spiece.model").write_bytes(proto.getvalue())


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny random CogVideoX-layout folder: vae/, text_encoder/, tokenizer/."""
    root = tmp_path_factory.mktemp("tiny_cogvideox")
    vae_cfg = VAEConfig(
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        scaling_factor=0.7,
    )
    save_diffusers_vae(CogVideoXVAE(vae_cfg, seed=0), root / "vae")
    t5_cfg = T5Config(vocab_size=140, d_model=32, d_kv=8, d_ff=48, num_layers=1, num_heads=4)
    save_t5_encoder(T5Encoder(t5_cfg, seed=0), root / "text_encoder")
    _spiece(root / "tokenizer")
    vae = load_diffusers_vae(root / "vae")
    text = T5TextEncoder.from_pretrained(root, text_len=TEXT_LEN, batch_size=SCENES * 2)
    return root, vae, text


def data_config(num_samples=6):
    c = default_data_config()
    c.update(
        dict(
            source="synthetic_shapes",
            num_scenes=SCENES,
            frames=FRAMES,
            height=SIZE,
            width=SIZE,
            num_samples=num_samples,
            holdout_fraction=0.0,
        )
    )
    return c


class FlakySource:
    """Wraps a pipeline source; unit 5 is a bad input (as a corrupt video would be)."""

    def __init__(self, inner):
        self.inner = inner
        self.num_units, self.units_per_sample = inner.num_units, inner.units_per_sample
        self.initial_skips = inner.initial_skips

    def load(self, units, rng):
        if 5 in units:
            raise BadSample("unreadable_video", "clip-5.mp4", "moov atom not found")
        return self.inner.load(units, rng)


def test_precompute_resume_stats_and_train(pretrained, tmp_path, monkeypatch):
    import m2dit_jax.data.pipeline as pipeline

    root, vae, text = pretrained
    real_build = pipeline.build_source
    monkeypatch.setattr(pipeline, "build_source", lambda *a, **k: FlakySource(real_build(*a, **k)))
    out = str(tmp_path / "latents")
    options = PrecomputeOptions(samples_per_shard=4, batch_size=2, latents_dtype="float32")
    cfg = data_config()

    # Host 0 of 2 writes shard 0 only; the stats say the job is incomplete.
    first = precompute(cfg, out, vae=vae, text_encoder=text, options=options, process_count=2)
    assert first["shards_written"] == 1 and first["samples"] == 4
    assert sorted(f for f in os.listdir(out) if "array_record" in f) == [shard_name(0, 2)]
    assert json.load(open(os.path.join(out, "stats.json")))["complete"] is False

    # A single-host re-run resumes: shard 0 is skipped, shard 1 (with the bad input) written.
    second = precompute(cfg, out, vae=vae, text_encoder=text, options=options)
    assert second["shards_already_done"] == 1 and second["shards_written"] == 1
    assert second["samples"] == 1 and second["skipped"] == {"unreadable_video": 1}
    stats = json.load(open(os.path.join(out, "stats.json")))
    assert stats["complete"] and stats["samples"] == 5 and stats["scenes"] == 10
    assert stats["skipped"] == {"unreadable_video": 1} and stats["skipped_total"] == 1

    records = [r for k in range(2) for r in read_latent_shard(os.path.join(out, shard_name(k, 2)))]
    assert len(records) == 5
    r = records[0]
    assert r.latents.shape == (SCENES, 3, SIZE // 8, SIZE // 8, 4)
    assert r.text_embeds.shape == (SCENES, TEXT_LEN, 32) and r.text_mask.shape == (SCENES, TEXT_LEN)
    assert r.meta["vae_scaling_factor"] == pytest.approx(0.7)

    # Each scene was encoded on its own: re-encode sample 0 here and compare.
    source = real_build(cfg, process_index=0, process_count=1)
    sample = source.load([0], np.random.default_rng([options.seed, 0]))
    clips = pixels_to_unit(sample["video"].reshape(SCENES, FRAMES, SIZE, SIZE, 3))
    np.testing.assert_allclose(r.latents, jax.jit(vae.encode)(clips), atol=1e-5)
    embeds, mask = text.encode(list(sample["captions"]))
    np.testing.assert_allclose(r.text_embeds, embeds, atol=1e-5)
    np.testing.assert_array_equal(r.text_mask, mask)
    assert list(r.captions) == list(sample["captions"])

    everything = np.concatenate([x.latents.reshape(-1, 4) for x in records]).astype(np.float64)
    np.testing.assert_allclose(stats["latent_mean"], everything.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(stats["latent_std"], everything.std(0), rtol=1e-5)

    # A different job in the same directory is refused (naming what differs).
    with pytest.raises(ValueError, match="options.samples_per_shard"):
        precompute(
            cfg, out, vae=vae, text_encoder=text, options=PrecomputeOptions(samples_per_shard=3)
        )

    # Train two steps from the shards.
    from test_train_common import tiny_config

    from m2dit_jax.train import train_and_evaluate

    config = tiny_config(num_steps=2, batch_size=2, checkpoint_every=2)
    config.data = default_data_config()
    config.data.update(dict(source="latents", path=out, num_scenes=SCENES, num_samples=5))
    config.model.update(
        dict(
            in_channels=4,
            out_channels=4,
            text_dim=32,
            text_len=TEXT_LEN,
            sample_frames=3,
            sample_height=SIZE // 8,
            sample_width=SIZE // 8,
        )
    )
    result = train_and_evaluate(config, str(tmp_path / "train"))
    assert result["step"] == 2 and len(result["losses"]) == 2
    assert all(np.isfinite(result["losses"]))


def test_precompute_rejects_bad_configs(pretrained, tmp_path):
    _, vae, text = pretrained
    cfg = data_config()
    cfg.text_encoder = "hashed"
    with pytest.raises(ValueError, match="text_encoder"):
        precompute(cfg, str(tmp_path), vae=vae, text_encoder=text)
    with pytest.raises(ValueError, match="samples_per_shard"):
        PrecomputeOptions(samples_per_shard=0)
    with pytest.raises(ValueError, match="posterior"):
        PrecomputeOptions(posterior="median")
    with pytest.raises(ValueError, match="process_index"):
        precompute(data_config(), str(tmp_path), vae=vae, text_encoder=text, process_index=2)


def test_sampled_posterior_differs_from_mode(pretrained):
    from launch.precompute import SceneVideoEncoder

    _, vae, _ = pretrained
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("data",))
    clips = np.random.default_rng(0).integers(0, 256, (3, 1, 16, 16, 3), np.uint8)
    mode = SceneVideoEncoder(vae, mesh, clips_per_call=3)(clips, jax.random.key(0))
    assert mode.shape == (3, 1, 2, 2, 4)  # 3 clips padded to the 8 devices and cut back
    np.testing.assert_allclose(mode, jax.jit(vae.encode)(pixels_to_unit(clips)), atol=1e-5)
    sampled = SceneVideoEncoder(vae, mesh, clips_per_call=3, posterior="sample")
    drawn = sampled(clips, jax.random.key(0))
    assert not np.allclose(drawn, mode) and np.isfinite(drawn).all()
    assert jnp.asarray(drawn).dtype == jnp.float32
