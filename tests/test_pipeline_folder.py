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
    from m2dit_jax.diffusion import generate, initial_noise
    from m2dit_jax.inference.pipeline import SamplingPipeline
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


# ---------------------------------------------------------------------- S = 3 parity (§8)
def _release_reference(modules, captions, negatives, x_init, *, steps, guidance, cond=None):
    """MASK2DIT.md §8 step by step from diffusers' / transformers' PyTorch modules.

    Joint sampling (``cond`` None) or one extension step (``cond``: the K condition scenes'
    latents, torch (1, K*F', C, h, w), already scaled/noised as the mode wants; t = 0 for them,
    reset after every DDIM step). ``x_init``: torch (1, S*F', C, h, w) initial latents.
    Returns the final latents (torch, (1, S*F', C, h, w)).
    """
    from test_model_positions_convention import release_pipeline_rope
    from test_model_reference import per_scene_reference

    torch, tokenizer, t5, transformer, scheduler = modules
    s = len(captions)
    num_cond = 0 if cond is None else cond.shape[1] // (x_init.shape[1] // s)

    def encode(texts):  # 1. each caption tokenised and T5-encoded on its own, scene-major
        out = []
        for text in texts:
            ids = tokenizer(
                text,
                padding="max_length",
                max_length=TEXT_LEN,
                truncation=True,
                add_special_tokens=True,
                return_tensors="pt",
            ).input_ids
            out.append(t5(ids)[0])
        return torch.cat(out, dim=1)  # (1, S*226, D)

    with torch.no_grad():
        text = torch.cat([encode(negatives), encode(captions)]).numpy()  # CFG: [neg; pos]
        latents = x_init * scheduler.init_noise_sigma  # 2.
        if cond is not None:
            latents[:, : cond.shape[1]] = cond
        _, sf, _, lh, lw = latents.shape
        f = sf // s
        cfg = transformer.config
        cos, sin = release_pipeline_rope(  # 3. temporal_size = S*F', crops, endpoint=False
            cfg.attention_head_dim, sf, lh, lw, cfg.sample_height, cfg.sample_width, cfg.patch_size
        )
        rope = (torch.from_numpy(cos), torch.from_numpy(sin))
        # mask 1 (§2) from its definition: text of scene i <-> its video; all video <-> video
        tokens = (lh // cfg.patch_size) * (lw // cfg.patch_size) * f
        seg = np.concatenate([np.repeat(np.arange(s), TEXT_LEN), np.repeat(np.arange(s), tokens)])
        video = np.arange(seg.size) >= s * TEXT_LEN
        mask = (seg[:, None] == seg[None]) | (video[:, None] & video[None])
        mask = np.broadcast_to(mask, (2, *mask.shape)).copy()
        scheduler.set_timesteps(steps)
        for t in scheduler.timesteps:  # 4.
            x = torch.cat([latents, latents]).numpy().transpose(0, 1, 3, 4, 2)
            ts = np.full((2, s), int(t))
            ts[:, :num_cond] = 0  # timestep_conditioning = 0 for the conditions
            v = per_scene_reference(transformer, x, text, ts, s, mask, rope=rope)
            v = torch.from_numpy(v.transpose(0, 1, 4, 2, 3).copy())
            v_uncond, v_text = v.chunk(2)
            v = v_uncond + guidance * (v_text - v_uncond)
            latents = scheduler.step(v, t, latents, return_dict=False)[0]
            if cond is not None:
                latents[:, : cond.shape[1]] = cond
    return latents


def _decode_scenes(torch, vae, latents, frames_per_scene):
    """§8 step 5: latents / scaling_factor, each scene decoded on its own, x / 2 + 0.5 in [0, 1]."""
    out = []
    with torch.no_grad():
        for scene in latents.split(frames_per_scene, dim=1):
            z = (scene / vae.config.scaling_factor).permute(0, 2, 1, 3, 4)
            out.append((vae.decode(z).sample / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 3, 0))
    return torch.cat(out).numpy()  # (S*F, H, W, 3)


@pytest.fixture(scope="module")
def three_scene_folder(torch_folder, tmp_path_factory):
    """The diffusers-built RoPE folder sampling 3 scenes jointly (m2dit.json, release positions:
    on this sample grid the crops start at 0, where both RoPE conventions agree)."""
    torch, diffusers, roots = torch_folder
    root = str(tmp_path_factory.mktemp("three_scenes") / "pipe")
    pf.link_or_copy_tree(roots["rope"], root)
    pf.write_m2dit_json(
        root, num_scenes=3, frames=FRAMES, height=SIZE, width=SIZE, fps=8, text_len=TEXT_LEN,
        positions="release",
    )  # fmt: skip
    ref = diffusers.CogVideoXPipeline.from_pretrained(root)  # float32 modules
    modules = (torch, ref.tokenizer, ref.text_encoder, ref.transformer, ref.scheduler)
    return root, modules, ref.vae


@pytest.mark.parity
def test_three_scenes_and_extension_equal_the_release_reference(three_scene_folder):
    """S = 3 joint sampling and one extension step (both condition modes) equal a reference
    that follows MASK2DIT.md §8 with diffusers' / transformers' modules, given the same draws."""
    import jax

    from m2dit_jax.inference.pipeline import SamplingPipeline, extension_key, posterior_key
    from m2dit_jax.inference.script import parse_script
    from m2dit_jax.rng import stream

    root, modules, vae = three_scene_folder
    torch = modules[0]
    steps, guidance, lf, lhw = 3, 6.0, 3, SIZE // 8
    captions = ["a red ball rolls across the table", "two cats play", "Actor1 opens the door"]
    negatives = ["blurry", "a dog", "blurry"]  # a per-scene negative in slot 2
    noise = np.random.default_rng(7).standard_normal((1, 3 * lf, lhw, lhw, 4)).astype(np.float32)
    to_torch = lambda a: torch.from_numpy(np.asarray(a).transpose(0, 1, 4, 2, 3).copy())

    # (a) joint generation of 3 scenes
    ref_lat = _release_reference(
        modules, captions, negatives, to_torch(noise), steps=steps, guidance=guidance
    )
    ref = _decode_scenes(torch, vae, ref_lat, lf)
    pipe = SamplingPipeline.from_pretrained(root, dtype="float32", attention_backend="xla")
    assert pipe.video.num_scenes == 3 and pipe.meta["positions"] == "release"
    new_caption, new_negative = "the man waves goodbye", "low quality"
    pipe.prepare_captions([*captions, *negatives, new_caption, new_negative])  # one T5 batch
    sampler = {"steps": steps, "guidance_scale": guidance, "seed": 4}
    script = parse_script(
        {"negative": "blurry", "sampler": sampler,
         "scenes": [captions[0], {"caption": captions[1], "negative": "a dog"}, captions[2]]}
    )  # fmt: skip
    ours = pipe.generate(script, noise=jnp.asarray(noise), output="float")
    assert ours.shape == ref.shape == (3 * FRAMES, SIZE, SIZE, 3)
    errors = {"joint": float(np.abs(ours - ref).max())}
    assert float(np.abs(ref - 0.5).max()) > 0.05  # not flat

    # (b) one extension step of that video: 2 conditions (window 3) + 1 new scene; the new
    # scene's frames are compared (the earlier ones are VAE round trips of the input)
    video = np.round(ours * 255).astype(np.uint8)
    new_noise = np.random.default_rng(8).standard_normal((1, lf, lhw, lhw, 4)).astype(np.float32)
    more = parse_script(
        {"sampler": sampler, "scenes": [{"caption": new_caption, "negative": new_negative}]}
    )
    pixels = torch.from_numpy(video.astype(np.float32) / 127.5 - 1.0)
    scenes = pixels.reshape(3, FRAMES, SIZE, SIZE, 3).permute(0, 4, 1, 2, 3)
    new_frames = {}
    for mode in ("release", "clean"):
        pipe.condition_mode = mode
        got = pipe.extend(video, captions, more, noise=jnp.asarray(new_noise), output="float")
        lat = []
        with torch.no_grad():
            for i in (1, 2):  # each condition scene VAE-encoded on its own
                dist = vae.encode(scenes[i : i + 1]).latent_dist
                if mode == "release":  # the posterior sample with our draw of scene i
                    eps = jax.random.normal(
                        jax.random.fold_in(posterior_key(4), i), (1, lf, lhw, lhw, 4)
                    )
                    z = dist.mean + dist.std * to_torch(eps).permute(0, 2, 1, 3, 4)
                else:
                    z = dist.mode()
                lat.append((z * vae.config.scaling_factor).permute(0, 2, 1, 3, 4))
        cond = torch.cat(lat, dim=1)
        if mode == "release":  # scheduler.add_noise(cond, randn, t = 0), our draw
            eps = jax.random.normal(
                stream(extension_key(4, 0), "condition_noise"), (1, 2 * lf, lhw, lhw, 4)
            )
            cond = modules[4].add_noise(cond, to_torch(eps), torch.tensor([0]))
        x_init = torch.cat([torch.zeros_like(cond), to_torch(new_noise)], dim=1)
        window = _release_reference(
            modules, [*captions[1:], new_caption], [new_negative] * 3, x_init,
            steps=steps, guidance=guidance, cond=cond,
        )  # fmt: skip
        want = _decode_scenes(torch, vae, window[:, 2 * lf :], lf)  # the new scene
        assert got.shape == (4 * FRAMES, SIZE, SIZE, 3) and want.shape == (FRAMES, SIZE, SIZE, 3)
        errors[mode] = float(np.abs(got[3 * FRAMES :] - want).max())
        new_frames[mode] = got[3 * FRAMES :]
    print("max |ours - reference|:", {k: f"{v:.2e}" for k, v in errors.items()})
    assert max(errors.values()) <= 1e-4, errors
    # the two condition modes are different computations (the check above can tell them apart)
    assert float(np.abs(new_frames["release"] - new_frames["clean"]).max()) > 1e-3


# ---------------------------------------------------------------------- Python API options
@pytest.fixture(scope="module")
def jax_pipe(jax_folder):
    """One float32 pipeline on jax_folder shared by the tests below (its compiled sampling
    programs are reused: they all run 3 DDIM steps with CFG)."""
    from m2dit_jax.inference.pipeline import SamplingPipeline

    pipe = SamplingPipeline.from_pretrained(jax_folder, dtype="float32")
    pipe.prepare_captions([*API_CAPTIONS, "blurry", None])
    return pipe


API_CAPTIONS = ["a red ball rolls", "Actor1 opens the door", "two cats play", "a man walks"]


def test_guidance_schedule_and_step_callback(jax_pipe):
    from m2dit_jax.diffusion import guidance_per_timestep
    from m2dit_jax.inference.script import SamplerOptions

    pipe = jax_pipe
    captions = [API_CAPTIONS[:2]]
    steps = 3
    timesteps = pipe.schedule.timesteps(steps)
    run = lambda sampler, **kw: np.asarray(pipe.sample_latents(captions, sampler, **kw))
    fixed = SamplerOptions(steps=steps, guidance_scale=6.0, seed=1)
    dynamic = SamplerOptions(steps=steps, guidance_scale=6.0, seed=1, dynamic_cfg=True)
    # A per-step table equal to the dynamic schedule's values reproduces dynamic CFG exactly.
    per_step = guidance_per_timestep(pipe.schedule, steps, 6.0, dynamic_cfg=True)[timesteps]
    np.testing.assert_array_equal(run(fixed, guidance_schedule=per_step), run(dynamic))
    np.testing.assert_array_equal(run(fixed, guidance_schedule=[6.0] * steps), run(fixed))
    varied = run(fixed, guidance_schedule=[6.0, 1.0, 3.0])
    assert np.abs(varied - run(fixed)).max() > 1e-3
    with pytest.raises(ValueError, match="guidance_schedule must be 3 finite numbers"):
        run(fixed, guidance_schedule=[6.0, 6.0])
    with pytest.raises(ValueError, match="not both"):
        run(dynamic, guidance_schedule=[6.0] * steps)
    # callback(step, timestep, latents) after every step; the last latents are the result.
    seen = []
    out = run(fixed, callback=lambda i, t, x: seen.append((i, t, x)))
    assert [(i, t) for i, t, _ in seen] == list(enumerate(int(t) for t in timesteps))
    np.testing.assert_array_equal(seen[-1][2], out)
    assert np.abs(seen[0][2] - out).max() > 1e-3
    # ... also through scene extension (3 scenes: 2 joint + 1 extended), window latents
    from m2dit_jax.inference.script import parse_script

    script = parse_script(
        {"sampler": {"steps": steps, "guidance_scale": 6.0}, "scenes": API_CAPTIONS[:3]}
    )
    seen.clear()
    pipe.generate(script, callback=lambda i, t, x: seen.append((i, x.shape)))
    assert [i for i, _ in seen] == [0, 1, 2, 0, 1, 2] and seen[-1][1] == (1, 6, 4, 4, 4)
    # explicit noise for every scene: the joint part and the extension's new scene
    noise = np.random.default_rng(0).standard_normal((1, 9, 4, 4, 4)).astype(np.float32)
    a = pipe.generate(script, noise=jnp.asarray(noise), output="float")
    b = pipe.generate(script, noise=jnp.asarray(noise), output="float")
    np.testing.assert_array_equal(a, b)
    c = pipe.generate(script, noise=jnp.asarray(noise[:, :6]), output="float")
    np.testing.assert_array_equal(a[: 2 * FRAMES], c[: 2 * FRAMES])  # same joint part
    assert np.abs(a[2 * FRAMES :] - c[2 * FRAMES :]).max() > 1e-3  # other new-scene noise


# ---------------------------------------------------------------------- cached extension
@pytest.fixture(scope="module")
def causal_folder(jax_folder, tmp_path_factory):
    """jax_folder's weights recorded as a causal-condition fine-tune (m2dit.json source)."""
    root = _copy(jax_folder, str(tmp_path_factory.mktemp("causal") / "pipe"))
    os.remove(os.path.join(root, pf.M2DIT_JSON))  # a hard link: never write through it
    pf.write_m2dit_json(
        root, num_scenes=2, frames=FRAMES, height=SIZE, width=SIZE, fps=8, text_len=TEXT_LEN,
        source={"cond_mask_mode": "causal_conditions"},
    )  # fmt: skip
    return root


def test_cached_extension_through_the_pipeline(
    jax_folder, jax_pipe, causal_folder, tmp_path, capsys
):
    from launch import sample as sample_cli
    from m2dit_jax import media
    from m2dit_jax.inference.pipeline import SamplingPipeline
    from m2dit_jax.inference.script import parse_script

    script = parse_script(
        {"negative": "blurry", "sampler": {"steps": 3, "guidance_scale": 6.0, "seed": 2},
         "scenes": API_CAPTIONS}
    )  # fmt: skip
    causal = SamplingPipeline.from_pretrained(causal_folder, dtype="float32")
    causal.prepare_captions([*API_CAPTIONS, "blurry", None])
    assert causal.extension_mask == "causal_conditions"
    uncached = causal.generate(script, output="float")  # 2 joint + 2 extensions (sliding)
    cached = causal.generate(script, output="float", cache_conditions=True)
    err = float(np.abs(cached - uncached).max())
    with capsys.disabled():
        print(f"pipeline cached vs uncached (causal mask): {err:.1e}")
    assert err <= 1e-5, err
    video = np.round(uncached[: 2 * FRAMES] * 255).astype(np.uint8)
    more = parse_script({"sampler": {"steps": 3, "seed": 5}, "scenes": ["the man waves"]})
    a = causal.extend(video, script.captions[:2], more, output="float")
    b = causal.extend(video, script.captions[:2], more, output="float", cache_conditions=True)
    assert float(np.abs(a - b).max()) <= 1e-5

    # A mask-1 model refuses the cache (it would change the numerics), naming the fix.
    plain = SamplingPipeline.from_pretrained(jax_folder, dtype="float32")
    assert plain.extension_mask == "mask2dit"
    with pytest.raises(ValueError, match="cond_mask_mode='causal_conditions'"):
        plain.generate(script, cache_conditions=True)
    with pytest.raises(ValueError, match="--extension-mask causal_conditions"):
        plain.extend(video, script.captions[:2], more, cache_conditions=True)
    masked = jax_pipe.generate(script, output="float")  # the same weights, mask 1
    assert float(np.abs(masked[2 * FRAMES :] - uncached[2 * FRAMES :]).max()) > 1e-3
    np.testing.assert_allclose(masked[: 2 * FRAMES], uncached[: 2 * FRAMES], atol=1e-6)
    # ... unless the user says the weights were trained with the causal mask (then the same
    # attribute drives the numerics as in the causal folder above).
    forced = SamplingPipeline.from_pretrained(
        jax_folder, dtype="float32", extension_mask="causal_conditions"
    )
    assert forced.causal_conditions and forced.extension_mask_recorded is None
    forced.check_cache_conditions()
    with pytest.raises(ValueError, match="extension_mask must be one of"):
        SamplingPipeline.from_pretrained(jax_folder, extension_mask="causal")

    # m2dit-sample --cache-conditions: refused on the mask-1 folder; on the causal one, with
    # the transformer sharded over fsdp 2 x tensor 2 (--mesh), the one-device cached video.
    path = tmp_path / "s.yaml"
    path.write_text(
        "negative: blurry\nsampler: {steps: 3, guidance_scale: 6.0, seed: 2}\n"
        f"scenes: [{', '.join(API_CAPTIONS)}]\n"
    )
    argv = ["--script", str(path), "--dtype", "float32", "--no-progress", "--cache-conditions"]
    with pytest.raises(SystemExit) as exit_info:
        sample_cli.main(["--model", jax_folder, "--out", str(tmp_path / "x.mp4"), *argv])
    assert exit_info.value.code == 2 and "causal_conditions" in capsys.readouterr().err
    out = str(tmp_path / "c.mp4")
    sample_cli.main(["--model", causal_folder, "--out", out, "--mesh", "fsdp=2,tensor=2", *argv])
    side = json.load(open(sample_cli.sidecar_path(out)))
    assert side["cache_conditions"] is True and side["extension_mask"] == "causal_conditions"
    assert side["mesh"] == "fsdp=2,tensor=2"
    one = np.round(cached * 255).astype(np.uint8)  # the one-device frames, written the same way
    ref = media.write_mp4(str(tmp_path / "one.mp4"), one, fps=8, scale=1)
    a, b = media.read_video(out).astype(int), media.read_video(ref).astype(int)
    assert a.shape == b.shape == (4 * FRAMES, SIZE, SIZE, 3)
    assert np.abs(a - b).mean() < 0.5 and a.std() > 5


# ---------------------------------------------------------------------- multi-device sampling
def test_sampling_on_a_mesh_matches_one_device(jax_folder, jax_pipe):
    import jax
    from flax import nnx

    from m2dit_jax.inference.pipeline import SamplingPipeline
    from m2dit_jax.inference.script import parse_script
    from m2dit_jax.sharding import make_mesh

    script = parse_script(
        {"negative": "blurry", "sampler": {"steps": 3, "guidance_scale": 6.0, "seed": 1},
         "scenes": API_CAPTIONS[:3]}
    )  # fmt: skip
    single = jax_pipe
    want = single.generate(script, output="float")  # 2 joint scenes + 1 extension
    mesh = make_mesh({"fsdp": 2, "context": 2}, jax.devices()[:4])
    sharded = SamplingPipeline.from_pretrained(jax_folder, dtype="float32", mesh=mesh)
    seen = []  # the per-step callback also works from the sharded program
    got = sharded.generate(script, output="float", callback=lambda i, t, x: seen.append(i))
    assert seen == [0, 1, 2, 0, 1, 2]
    leaves = jax.tree.leaves(nnx.state(sharded.model))
    assert any(not leaf.sharding.is_fully_replicated for leaf in leaves)  # weights are split
    err = float(np.abs(got - want).max())
    print(f"mesh fsdp 2 x context 2 vs one device: {err:.1e}")
    assert err <= 1e-5, err


def test_scenes_of_their_own_lengths_through_the_pipeline(jax_pipe):
    """A script with per-scene `frames:` / `seconds:`: 17, 9 and 1 pixel frames (5, 3, 1
    latent frames; the VAE round-trips 8k+1 frames); the joint part equals the library's ragged
    `generate` with the same seed, every scene is decoded on its own, extension appends a
    1-frame shot."""
    from m2dit_jax.diffusion import generate
    from m2dit_jax.inference.script import SamplerOptions, parse_script

    pipe = jax_pipe
    seconds = 7.6 / pipe.video.fps  # 7.6 frames -> 9 (the nearest count that round-trips)
    script = parse_script({
        "sampler": {"steps": 3, "guidance_scale": 6.0, "seed": 2},
        "scenes": [{"caption": API_CAPTIONS[0], "frames": 17},
                   {"caption": API_CAPTIONS[1], "seconds": seconds},
                   {"caption": API_CAPTIONS[2], "frames": 1}],
    })  # fmt: skip
    assert pipe.scene_pixel_frames(script) == (17, 9, 1)
    assert pipe.scene_latent_frames(script) == (5, 3, 1)
    video = pipe.generate(script, output="float")
    assert video.shape == (27, SIZE, SIZE, 3)
    sampler = SamplerOptions(steps=3, guidance_scale=6.0, seed=2)
    joint = pipe.sample_latents([API_CAPTIONS[:2]], sampler, scene_frames=(5, 3))
    assert joint.shape == (1, 8, 4, 4, 4)
    ref = generate(
        pipe.model, pipe.encode_captions(API_CAPTIONS[:2]), num_scenes=2,
        latent_shape=pipe.latent_shape[1:], scene_frames=(5, 3), num_steps=3,
        guidance_scale=6.0, negative_text_embeds=pipe.encode_negatives([None, None]), seed=2,
        schedule=pipe.schedule,
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(ref), np.asarray(joint), atol=1e-5)
    first = pipe.decode_latents(joint[:, :5], output="float", scene_frames=(5,))[0]
    np.testing.assert_allclose(video[:17], first, atol=1e-5)
    # extending the ragged video by one more 9-frame scene (script lengths for new scenes)
    more = parse_script({"sampler": {"steps": 3, "seed": 2},
                         "scenes": [{"caption": API_CAPTIONS[3], "frames": 9}]})  # fmt: skip
    uint8 = pipe.generate(script)
    longer = pipe.extend(uint8, API_CAPTIONS[:3], more, previous_frames=(17, 9, 1))
    assert longer.shape == (36, SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="do not add up"):
        pipe.extend(uint8, API_CAPTIONS[:3], more, previous_frames=(17, 9, 2))
    for frames, why in ((6, "1 \\+ 4k"), (5, "decode to 8 frames")):
        bad = parse_script({"scenes": [{"caption": "x", "frames": frames}, "y"]})
        with pytest.raises(ValueError, match=f"scene 1.*{frames} frames do not fit.*{why}"):
            pipe.scene_latent_frames(bad)
