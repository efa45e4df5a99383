"""Pipeline folders (diffusers CogVideoX layout + m2dit.json): S = 1 equals diffusers'
CogVideoXPipeline frame for frame; loading errors name the part; the sampling CLI on a folder."""

import io
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from m2dit_jax.inference import pipeline_folder as pf

TEXT_LEN, FRAMES, SIZE = 16, 9, 32  # 9 frames -> 3 latent frames, 32 px -> 4x4 latents
SENTENCES = [
    "a red ball rolls across the table",
    "two cats play in the garden at night",
    "the camera pans over a snowy mountain",
    "a man walks his dog along the beach",
    "Actor1 opens the door and smiles",
    "blurry low quality",
]
SCHEDULER = {
    "_class_name": "CogVideoXDDIMScheduler",
    "_diffusers_version": "0.42.1",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "sample_max_value": 1.0,
    "set_alpha_to_one": True,
    "snr_shift_scale": 3.0,
    "steps_offset": 0,
    "timestep_spacing": "trailing",
    "trained_betas": None,
}
VAE = dict(
    block_out_channels=(16, 16, 32, 32),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    scaling_factor=0.7,
)
T5 = dict(vocab_size=140, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4)


def write_tokenizer(folder):
    """A T5-style sentencepiece model (pad 0, eos 1, unk 2) + tokenizer_config.json, the
    files of CogVideoX's tokenizer/ folder."""
    import sentencepiece as spm

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 20),
        model_writer=proto,
        vocab_size=40,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        model_type="unigram",
        character_coverage=1.0,
        minloglevel=2,
    )
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "spiece.model"), "wb") as f:
        f.write(proto.getvalue())
    config = {
        "tokenizer_class": "T5Tokenizer",
        "extra_ids": 100,
        "model_max_length": TEXT_LEN,
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "legacy": True,
    }
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)


def write_common(root):
    """model_index.json, tokenizer/ and scheduler/ of a tiny pipeline folder."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, pf.MODEL_INDEX), "w") as f:
        json.dump(pf.COGVIDEOX_MODEL_INDEX, f)
    write_tokenizer(os.path.join(root, "tokenizer"))
    os.makedirs(os.path.join(root, "scheduler"), exist_ok=True)
    with open(os.path.join(root, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(SCHEDULER, f)


def model_config(positions="rope", **overrides):
    from m2dit_jax.model import get_model_config

    return get_model_config(
        "tiny",
        in_channels=4,
        out_channels=4,
        text_dim=T5["d_model"],
        text_len=TEXT_LEN,
        sample_frames=3,
        sample_height=SIZE // 8,
        sample_width=SIZE // 8,
        positions=positions,
        **overrides,
    )


def build_jax_folder(root, positions="rope", seed=0):
    """A tiny random pipeline folder written by our own savers (no torch needed)."""
    from m2dit_jax.convert import save_diffusers_transformer
    from m2dit_jax.encoders.t5 import T5Config, T5Encoder, save_t5_encoder
    from m2dit_jax.encoders.vae import CogVideoXVAE, VAEConfig, save_diffusers_vae
    from m2dit_jax.model import create_model

    write_common(root)
    save_diffusers_vae(CogVideoXVAE(VAEConfig(**VAE), seed=seed), os.path.join(root, "vae"))
    save_t5_encoder(T5Encoder(T5Config(**T5), seed=seed), os.path.join(root, "text_encoder"))
    model = create_model(model_config(positions), seed=seed)
    save_diffusers_transformer(model, os.path.join(root, "transformer"))
    return root


# ---------------------------------------------------------------------- parity with diffusers
@pytest.fixture(scope="module")
def torch_folder(tmp_path_factory):
    """A tiny random CogVideoX pipeline built with diffusers / transformers (norm affines and
    adaLN weights randomised), saved in the released layout."""
    torch = pytest.importorskip("torch", reason="parity needs the `parity` extra (torch)")
    diffusers = pytest.importorskip("diffusers", reason="parity needs the `parity` extra")
    transformers = pytest.importorskip("transformers", reason="parity needs the `parity` extra")
    root = str(tmp_path_factory.mktemp("cogvideox_tiny"))
    write_common(root)
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLCogVideoX(**VAE).eval()
    t5 = transformers.T5EncoderModel(transformers.T5Config(**T5, feed_forward_proj="gated-gelu"))
    roots = {}
    for positions in ("rope", "sincos"):
        transformer = diffusers.CogVideoXTransformer3DModel(
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=4,
            out_channels=4,
            time_embed_dim=32,
            text_embed_dim=T5["d_model"],
            num_layers=2,
            sample_width=SIZE // 8,
            sample_height=SIZE // 8,
            sample_frames=FRAMES,
            max_text_seq_length=TEXT_LEN,
            use_rotary_positional_embeddings=positions == "rope",
        ).eval()
        with torch.no_grad():  # nothing zero-initialised: every weight matters
            for module in (vae, transformer):
                for name, p in module.named_parameters():
                    p.add_((0.1 if "norm" in name else 0.02) * torch.randn_like(p))
        path = os.path.join(root, positions)
        for part in ("tokenizer", "scheduler"):
            shutil.copytree(os.path.join(root, part), os.path.join(path, part))
        shutil.copy(os.path.join(root, pf.MODEL_INDEX), path)
        vae.save_pretrained(os.path.join(path, "vae"))
        t5.save_pretrained(os.path.join(path, "text_encoder"))
        transformer.save_pretrained(os.path.join(path, "transformer"))
        roots[positions] = path
    return torch, diffusers, roots


@pytest.mark.parity
@pytest.mark.parametrize("positions, dynamic_cfg", [("rope", False), ("sincos", True)])
def test_one_scene_equals_diffusers_pipeline(torch_folder, positions, dynamic_cfg):
    from m2dit_jax.inference.pipeline import SamplingPipeline
    from m2dit_jax.inference.script import parse_script

    torch, diffusers, roots = torch_folder
    root = roots[positions]
    prompt, negative = "two cats play in the garden", "blurry"  # truncated / padded
    steps, guidance = 3, 6.0
    noise = np.random.default_rng(1).standard_normal((1, 3, SIZE // 8, SIZE // 8, 4))
    noise = noise.astype(np.float32)

    pipe = diffusers.CogVideoXPipeline.from_pretrained(root)  # float32
    with torch.no_grad():
        ref = pipe(
            prompt=prompt,
            negative_prompt=negative,
            num_frames=FRAMES,
            height=SIZE,
            width=SIZE,
            num_inference_steps=steps,
            guidance_scale=guidance,
            use_dynamic_cfg=dynamic_cfg,
            latents=torch.from_numpy(noise.transpose(0, 1, 4, 2, 3).copy()),
            max_sequence_length=TEXT_LEN,
            output_type="np",
        ).frames
    ref = np.asarray(ref)[0]  # (F, H, W, 3) float in [0, 1]

    ours = SamplingPipeline.from_pretrained(root, dtype="float32", attention_backend="xla")
    assert (ours.video.num_scenes, ours.video.frames, ours.video.height) == (1, FRAMES, SIZE)
    assert ours.schedule.snr_shift_scale == 3.0
    script = parse_script(
        {
            "negative": negative,
            "sampler": {"steps": steps, "guidance_scale": guidance, "dynamic_cfg": dynamic_cfg},
            "scenes": [prompt],
        }
    )
    frames = ours.generate(script, noise=jnp.asarray(noise), output="float")
    assert frames.shape == ref.shape == (FRAMES, SIZE, SIZE, 3)
    err = float(np.abs(frames - ref).max())
    print(f"max |ours - diffusers| = {err:.2e}")
    assert err <= 1e-4, err
    assert float(np.abs(ref - 0.5).max()) > 0.05  # the video is not flat


# ---------------------------------------------------------------------- folder checks
@pytest.fixture(scope="module")
def jax_folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny_pipeline"))
    build_jax_folder(root)
    pf.write_m2dit_json(
        root, num_scenes=2, frames=FRAMES, height=SIZE, width=SIZE, fps=8, text_len=TEXT_LEN
    )
    return root


def _copy(src, dst):
    pf.link_or_copy_tree(src, dst)  # hard links: replace files, never write into them
    return dst


def _replace_json(path, data):
    os.remove(path)
    with open(path, "w") as f:
        json.dump(data, f)


def test_read_folder_and_errors(jax_folder, tmp_path):
    from m2dit_jax.inference.pipeline import SamplingPipeline

    folder = pf.read_pipeline_folder(jax_folder)
    assert folder.m2dit["num_scenes"] == 2 and folder.text_len == TEXT_LEN
    schedule, sampler = pf.schedule_from_scheduler_config(folder.scheduler_config)
    assert (schedule.snr_shift_scale, schedule.timestep_spacing, sampler) == (
        3.0,
        "trailing",
        "ddim",
    )

    def broken(name, edit):
        root = _copy(jax_folder, str(tmp_path / name))
        edit(root)
        return root

    cases = [
        ("index", lambda r: os.remove(os.path.join(r, "model_index.json")), "model_index.json"),
        ("vae", lambda r: shutil.rmtree(os.path.join(r, "vae")), "missing the vae/ subfolder"),
        (
            "spiece",
            lambda r: os.remove(os.path.join(r, "tokenizer", "spiece.model")),
            "tokenizer/spiece.model is missing",
        ),
        (
            "weights",
            lambda r: os.remove(
                os.path.join(r, "transformer", "diffusion_pytorch_model.safetensors")
            ),
            "transformer/ holds no",
        ),
        (
            "t5config",
            lambda r: os.remove(os.path.join(r, "text_encoder", "config.json")),
            "text_encoder/config.json",
        ),
        (
            "scheduler",
            lambda r: _replace_json(
                os.path.join(r, "scheduler", "scheduler_config.json"),
                {**SCHEDULER, "prediction_type": "epsilon"},
            ),
            "scheduler/scheduler_config.json: unsupported settings: prediction_type",
        ),
        (
            "m2dit",
            lambda r: _replace_json(os.path.join(r, "m2dit.json"), {"format": "x"}),
            "m2dit.json: format",
        ),
    ]
    for name, edit, message in cases:
        with pytest.raises(ValueError, match=message):
            SamplingPipeline.from_pretrained(broken(name, edit), dtype="float32")
    # A transformer that does not fit its config: named when the (lazy) transformer loads.
    root = broken("arch", lambda r: None)
    cfg = os.path.join(root, "transformer", "config.json")
    _replace_json(cfg, {**json.load(open(cfg)), "num_layers": 3})
    with pytest.raises(ValueError, match="transformer.*missing tensors"):
        SamplingPipeline.from_pretrained(root, dtype="float32", lazy=False)


def test_pipeline_api_noise_release_and_geometry(jax_folder):
    from m2dit_jax.diffusion import generate
    from m2dit_jax.inference.pipeline import SamplingPipeline
    from m2dit_jax.inference.sampling import initial_noise
    from m2dit_jax.inference.script import SamplerOptions

    pipe = SamplingPipeline.from_pretrained(jax_folder, dtype="float32", progress=True)
    assert not pipe.model_loaded and not pipe.text_encoder.loaded  # lazy
    captions = ["a red ball rolls", "Actor1 opens the door"]
    sampler = SamplerOptions(steps=2, guidance_scale=6.0, seed=3)
    pipe.prepare_captions([*captions, None])
    pipe.release_text_encoder()
    assert pipe.text_encoder.loads == 1 and not pipe.text_encoder.loaded
    latents = pipe.sample_latents([captions], sampler)  # cached embeddings: T5 stays unloaded
    assert pipe.text_encoder.loads == 1 and latents.shape == (1, 6, 4, 4, 4)
    shape = latents.shape
    same = pipe.sample_latents([captions], sampler, noise=initial_noise(3, shape))
    np.testing.assert_array_equal(np.asarray(same), np.asarray(latents))
    # The same seed through m2dit_jax.diffusion.generate gives the same latents.
    ref = generate(
        pipe.model,
        pipe.encode_captions(captions),
        num_scenes=2,
        latent_shape=pipe.latent_shape,
        num_steps=2,
        guidance_scale=6.0,
        negative_text_embeds=pipe.encode_negatives([None, None]),
        seed=3,
        schedule=pipe.schedule,
    )
    np.testing.assert_allclose(np.asarray(ref), np.asarray(latents), atol=1e-5)
    with pytest.raises(ValueError, match="noise must be"):
        pipe.sample_latents([captions], sampler, noise=jnp.zeros((1, 3, 4, 4, 4)))
    # Geometry overrides are checked against the VAE.
    assert pipe.set_video(frames=5, height=16, width=48) and pipe.latent_shape == (2, 2, 6, 4)
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        pipe.set_video(frames=6)
    with pytest.raises(ValueError, match="multiple of the VAE"):
        pipe.set_video(height=20)


def test_sample_cli_on_a_pipeline_folder(jax_folder, tmp_path, capsys):
    from launch import sample as sample_cli
    from m2dit_jax import media

    script = tmp_path / "three.yaml"
    script.write_text(
        "negative: blurry\nsampler: {steps: 2, guidance_scale: 6.0, seed: 0, dynamic_cfg: true}\n"
        "scenes:\n  - a red ball rolls across the table\n"
        "  - {caption: two cats play in the garden, negative: a dog}\n"
        "  - Actor1 opens the door and smiles\n"
    )
    out = str(tmp_path / "out.mp4")
    paths = sample_cli.main(
        [
            "--model",
            jax_folder,
            "--script",
            str(script),
            "--out",
            out,
            "--dtype",
            "float32",
            "--gif",
        ]
    )
    assert out in paths and os.path.isfile(str(tmp_path / "out.gif"))
    video = media.read_video(out)
    assert video.shape == (3 * FRAMES, SIZE, SIZE, 3)  # 2 joint scenes + 1 extension
    side = json.load(open(sample_cli.sidecar_path(out)))
    assert side["frames_per_scene"] == FRAMES and side["sampler"]["dynamic_cfg"] is True
    assert "2/2" in capsys.readouterr().err  # the tqdm bar over denoising steps (stderr)

    more = tmp_path / "more.yaml"
    more.write_text("sampler: {steps: 2, guidance_scale: 1.0}\nscenes: [the man waves goodbye]\n")
    longer = str(tmp_path / "longer.mp4")
    sample_cli.main(
        ["--model", jax_folder, "--script", str(more), "--extend", out, "--out", longer,
         "--dtype", "float32", "--conditions", "release", "--no-progress"]
    )  # fmt: skip
    assert media.read_video(longer).shape == (4 * FRAMES, SIZE, SIZE, 3)
    assert len(json.load(open(sample_cli.sidecar_path(longer)))["captions"]) == 4

    # Bad geometry / video refused with exit code 2 and a message.
    with pytest.raises(SystemExit) as exit_info:
        sample_cli.main(
            ["--model", jax_folder, "--script", str(more), "--extend", out, "--out", longer,
             "--dtype", "float32", "--frames", "5"]
        )  # fmt: skip
    assert exit_info.value.code == 2 and "not a whole number" in capsys.readouterr().err


def test_cli_option_parsing():
    from launch import sample as sample_cli

    assert sample_cli.parse_tiling(None) is None
    assert sample_cli.parse_tiling("auto").tile_height == 240
    tiling = sample_cli.parse_tiling("120x180")
    assert (tiling.tile_height, tiling.tile_width) == (120, 180)
    with pytest.raises(ValueError, match="--tiling"):
        sample_cli.parse_tiling("big")
    assert sample_cli.parse_mesh("fsdp=2,data=1").shape["fsdp"] == 2
    with pytest.raises(ValueError, match="--mesh"):
        sample_cli.parse_mesh("fsdp")
