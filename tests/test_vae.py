"""CogVideoX VAE port: parity with diffusers (chunked, tiled), weight loading, input checks."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from m2dit_jax.encoders.vae import (
    CogVideoXVAE,
    SpatialTiling,
    VAEConfig,
    chunk_bounds,
    load_diffusers_vae,
    pixels_to_unit,
    unit_to_pixels,
)

TINY = dict(
    block_out_channels=(32, 32, 64, 64), layers_per_block=1, latent_channels=4, norm_num_groups=8
)


def to_torch_layout(x):
    return np.asarray(x).transpose(0, 4, 1, 2, 3)


def to_jax_layout(x):
    return jnp.asarray(x.numpy().transpose(0, 2, 3, 4, 1))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    torch = pytest.importorskip("torch", reason="parity needs the `parity` extra (torch)")
    diffusers = pytest.importorskip("diffusers", reason="parity needs the `parity` extra")
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLCogVideoX(**TINY, scaling_factor=0.7).eval()
    with torch.no_grad():  # non-trivial norm affines so a transposed/misnamed one shows up
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("vae")
    ref.save_pretrained(folder)
    return torch, ref, folder, load_diffusers_vae(folder)


@pytest.mark.parity
@pytest.mark.parametrize("frames", [9, 17])
def test_encode_decode_match_diffusers(reference, frames):
    torch, ref, _, vae = reference
    gen = torch.Generator().manual_seed(frames)
    video = torch.rand(1, 3, frames, 16, 24, generator=gen) * 2 - 1
    with torch.no_grad():
        dist = ref.encode(video).latent_dist
        z = torch.randn(dist.mean.shape, generator=gen)
        decoded = ref.decode(z).sample
    mean, logvar = jax.jit(vae.encode_moments)(to_jax_layout(video))
    assert mean.shape == (1, (frames - 1) // 4 + 1, 2, 3, 4)
    np.testing.assert_allclose(to_torch_layout(mean), dist.mean.numpy(), atol=1e-4)
    np.testing.assert_allclose(to_torch_layout(logvar), dist.logvar.numpy(), atol=1e-4)
    ours = jax.jit(vae.decode_raw)(to_jax_layout(z))
    assert ours.shape == (1, frames, 16, 24, 3)
    np.testing.assert_allclose(to_torch_layout(ours), decoded.numpy(), atol=1e-4)


@pytest.mark.parity
def test_tiled_encode_decode_match_diffusers(reference):
    torch, ref, _, vae = reference
    ref.enable_tiling(32, 32, 0.25, 0.25)
    try:
        gen = torch.Generator().manual_seed(1)
        video = torch.rand(1, 3, 9, 40, 40, generator=gen) * 2 - 1
        z = torch.randn(1, 4, 3, 5, 5, generator=gen)
        with torch.no_grad():
            mean = ref.encode(video).latent_dist.mean.numpy()
            decoded = ref.decode(z).sample.numpy()
    finally:
        ref.disable_tiling()
    with torch.no_grad():
        untiled = ref.encode(video).latent_dist.mean.numpy()
    # Tiling really changes the computation (tiles see less context): the check is not vacuous.
    assert np.abs(untiled - mean).max() > 1e-3
    tiling = SpatialTiling(32, 32, 0.25, 0.25)
    # Eagerly: each tile shape runs its own cached jitted program.
    ours, _ = vae.encode_moments(to_jax_layout(video), tiling=tiling)
    np.testing.assert_allclose(to_torch_layout(ours), mean, atol=1e-4)
    # Inside an outer jit the tiles are inlined into one program instead.
    ours_dec = jax.jit(lambda v: vae.decode_raw(v, tiling=tiling))(to_jax_layout(z))
    np.testing.assert_allclose(to_torch_layout(ours_dec), decoded, atol=1e-4)


@pytest.mark.parity
def test_loader_reads_sharded_checkpoint_and_pipeline_folder(reference, tmp_path):
    _, _, folder, vae = reference
    from safetensors.numpy import load_file, save_file

    tensors = load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    vae_dir = tmp_path / "pipe" / "vae"
    vae_dir.mkdir(parents=True)
    keys = sorted(tensors)
    shards = {"a.safetensors": keys[: len(keys) // 2], "b.safetensors": keys[len(keys) // 2 :]}
    for name, ks in shards.items():
        save_file({k: tensors[k] for k in ks}, str(vae_dir / name))
    index = {"weight_map": {k: n for n, ks in shards.items() for k in ks}}
    (vae_dir / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    (vae_dir / "config.json").write_text((folder / "config.json").read_text())
    loaded = load_diffusers_vae(tmp_path / "pipe")
    a = nnx.state(vae, nnx.Param)
    b = nnx.state(loaded, nnx.Param)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def _write_checkpoint(folder, tensors, config):
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))


def _torch_style_state(vae):
    """Our params back in torch layout (the inverse of the loader's conversion)."""
    from m2dit_jax.encoders.weights_io import param_names

    out = {}
    for name, var in param_names(vae).items():
        v = np.asarray(var[...])
        if v.ndim >= 3:
            v = np.transpose(v, (v.ndim - 1, v.ndim - 2) + tuple(range(v.ndim - 2)))
        out[name] = np.ascontiguousarray(v)
    return out


def test_loader_names_missing_unexpected_and_misshaped_keys(tmp_path):
    cfg = VAEConfig(**TINY)
    vae = CogVideoXVAE(cfg, seed=3)
    config = {"_class_name": "AutoencoderKLCogVideoX", **TINY}
    state = _torch_style_state(vae)
    # A faithful round trip first: the loader inverts exactly this layout.
    _write_checkpoint(tmp_path / "ok", state, config)
    loaded = load_diffusers_vae(tmp_path / "ok")
    jax.tree.map(
        np.testing.assert_array_equal, nnx.state(vae, nnx.Param), nnx.state(loaded, nnx.Param)
    )
    broken = dict(state)
    del broken["decoder.conv_out.conv.bias"]
    broken["encoder.extra.weight"] = np.zeros(3, np.float32)
    broken["encoder.conv_in.conv.weight"] = np.zeros((32, 3, 3, 3, 1), np.float32)
    _write_checkpoint(tmp_path / "bad", broken, config)
    with pytest.raises(ValueError) as err:
        load_diffusers_vae(tmp_path / "bad")
    msg = str(err.value)
    assert "decoder.conv_out.conv.bias" in msg and "missing" in msg
    assert "encoder.extra.weight" in msg and "unexpected" in msg
    assert "encoder.conv_in.conv.weight" in msg
    with pytest.raises(ValueError, match="config.json"):
        load_diffusers_vae(tmp_path / "nothing-here")


def test_config_chunking_and_validation():
    assert chunk_bounds(49, 8) == [(0, 9)] + [(9 + 8 * i, 17 + 8 * i) for i in range(5)]
    assert chunk_bounds(13, 2) == [(0, 3), (3, 5), (5, 7), (7, 9), (9, 11), (11, 13)]
    assert chunk_bounds(5, 8) == [(0, 5)]
    cfg = VAEConfig()
    assert [cfg.latent_frames(f) for f in (1, 9, 17, 49)] == [1, 3, 5, 13]
    assert VAEConfig.from_diffusers({"scaling_factor": 0.7, "foo": 1}).scaling_factor == 0.7
    with pytest.raises(ValueError, match="down_block_types"):
        VAEConfig.from_diffusers({"down_block_types": ["DownEncoderBlock2D"] * 4})
    with pytest.raises(ValueError, match="norm_num_groups"):
        VAEConfig(block_out_channels=(30, 32), norm_num_groups=8)
    with pytest.raises(ValueError, match="chunk|frame"):
        chunk_bounds(0, 8)


def test_encode_decode_shapes_sampling_and_input_checks():
    vae = CogVideoXVAE(VAEConfig(**TINY), seed=0)
    video = pixels_to_unit(np.random.default_rng(0).integers(0, 256, (1, 1, 8, 16, 3), np.uint8))
    assert video.dtype == jnp.float32 and float(video.min()) >= -1 and float(video.max()) <= 1

    @jax.jit
    def run(v, key):
        mean, _ = vae.encode_moments(v)
        return mean, vae.encode(v), vae.encode(v, key=key), vae.decode(vae.encode(v))

    mean, mode, sampled, frames = run(video, jax.random.key(0))
    assert mode.shape == (1, 1, 1, 2, 4)
    np.testing.assert_allclose(mode, vae.config.scaling_factor * mean, rtol=1e-6)
    assert sampled.shape == mode.shape and not np.allclose(sampled, mode)
    assert frames.shape == (1, 1, 8, 16, 3)
    np.testing.assert_allclose(vae.unscale(vae.scale(mean)), mean, rtol=1e-6)
    # 5 frames -> 2 latent frames (F = 4k + 1 maps to k + 1, as in diffusers).
    assert vae.config.latent_frames(5) == 2
    assert unit_to_pixels(frames).dtype == jnp.uint8
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode(jnp.zeros((1, 5, 12, 16, 3)))
    with pytest.raises(ValueError, match=r"\(B, F, H, W, 3\)"):
        vae.encode(jnp.zeros((5, 16, 16, 3)))
    with pytest.raises(ValueError, match="latents must be"):
        vae.decode(jnp.zeros((1, 2, 2, 2, 3)))
