"""50-step DDIM + CFG sampling: our jitted loop vs the diffusers scheduler loop, same weights.

Both sides run the same Mask2DiT/CogVideoX transformer (ours built at random and exported
with ``save_diffusers_transformer``; diffusers loads that folder), the same multi-scene
sequence with mask 1 (diffusers gets it as a boolean attention mask), the same initial
noise, release CFG (6.0, batched uncond/cond) and the released CogVideoX DDIM scheduler.
The process is pinned to ``--threads`` cores before jax/torch start, and torch uses that
many threads. Prints compile time, seconds per video for each side, their ratio, and the
max difference of the final latents.

    .venv/bin/python benchmarks/sampling.py            # medium config, 50 steps
    .venv/bin/python benchmarks/sampling.py --layers 2 --width 64 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--scenes", type=int, default=2)
    p.add_argument("--frames", type=int, default=2, help="latent frames per scene")
    p.add_argument("--size", type=int, default=16, help="latent height = width")
    p.add_argument("--text-len", type=int, default=16, help="caption tokens per scene")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=6.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    return p.parse_args()


def main() -> None:
    args = parse_args()
    os.sched_setaffinity(0, set(range(args.threads)))
    import jax
    import numpy as np
    import torch
    from diffusers import CogVideoXDDIMScheduler, CogVideoXTransformer3DModel
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    from m2dit_jax.convert import save_diffusers_transformer
    from m2dit_jax.diffusion import CogVideoXSchedule, generate
    from m2dit_jax.layout import SceneLayout
    from m2dit_jax.model import create_model, get_model_config

    torch.set_num_threads(args.threads)
    jax.config.update("jax_default_matmul_precision", "highest")
    s, f, hw, t_len = args.scenes, args.frames, args.size, args.text_len
    cfg = get_model_config("tiny")
    cfg.num_layers, cfg.num_heads, cfg.head_dim = args.layers, args.heads, args.head_dim
    cfg.text_len, cfg.text_dim, cfg.time_embed_dim = t_len, 64, 128
    cfg.sample_frames, cfg.sample_height, cfg.sample_width = f, hw, hw
    c = cfg.in_channels
    model = create_model(cfg, seed=0)
    layout = SceneLayout(s, t_len, f, hw // 2, hw // 2)
    print(
        f"config: {args.layers} layers, {args.heads}x{args.head_dim} heads, {s} scenes x "
        f"{f} frames x {hw}x{hw} latents, {layout.seq_len} tokens, batch {args.batch}, "
        f"{args.steps} steps, CFG {args.guidance}, {args.threads} threads, "
        f"jax {jax.__version__}, torch {torch.__version__}",
        flush=True,
    )

    key = jax.random.key(0)
    text = jax.random.normal(key, (args.batch, s * t_len, 64))
    negative = jax.random.normal(jax.random.key(1), (t_len, 64))
    shape = (args.batch, s * f, hw, hw, c)
    kw = dict(
        num_scenes=s,
        latent_shape=(f, hw, hw, c),
        num_steps=args.steps,
        guidance_scale=args.guidance,
        negative_text_embeds=negative,
        seed=3,
        schedule=CogVideoXSchedule.create(snr_shift_scale=1.0),
    )
    t0 = time.perf_counter()
    ours = generate(model, text, **kw).block_until_ready()
    first = time.perf_counter() - t0

    # ---------------------------------------------------------------- diffusers side
    with tempfile.TemporaryDirectory() as tmp:
        save_diffusers_transformer(model, tmp)
        ref = CogVideoXTransformer3DModel.from_pretrained(tmp).eval()
    sched = CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=True,
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        rescale_betas_zero_snr=True,
        snr_shift_scale=1.0,
    )
    gh = gw = hw // 2
    crops = get_resize_crop_region_for_grid((gh, gw), gw, gh)
    rope = get_3d_rotary_pos_embed(
        embed_dim=args.head_dim, crops_coords=crops, grid_size=(gh, gw), temporal_size=s * f
    )
    mask = torch.from_numpy(layout.dense_mask())[None].expand(2 * args.batch, -1, -1)
    neg_full = np.broadcast_to(np.tile(np.asarray(negative), (s, 1))[None], text.shape)
    prompt = torch.from_numpy(np.concatenate([neg_full, np.asarray(text)]))
    noise = jax.random.normal(jax.random.split(jax.random.key(3))[0], shape)
    noise_t = torch.from_numpy(np.array(noise)).permute(0, 1, 4, 2, 3).contiguous()

    def diffusers_video() -> torch.Tensor:
        sched.set_timesteps(args.steps)
        latents = noise_t.clone()
        with torch.no_grad():
            for t in sched.timesteps:
                v = ref(
                    hidden_states=torch.cat([latents] * 2),
                    encoder_hidden_states=prompt,
                    timestep=t.expand(2 * args.batch),
                    image_rotary_emb=rope,
                    attention_kwargs={"attention_mask": mask},
                    return_dict=False,
                )[0].float()
                v_uncond, v_text = v.chunk(2)
                v = v_uncond + args.guidance * (v_text - v_uncond)
                latents = sched.step(v, t, latents, return_dict=False)[0]
        return latents

    theirs = diffusers_video()  # warm-up
    diff = np.abs(theirs.permute(0, 1, 3, 4, 2).numpy() - np.asarray(ours)).max()

    ours_times, theirs_times = [], []
    for _ in range(args.repeats):  # interleaved so machine load hits both alike
        t0 = time.perf_counter()
        generate(model, text, **kw).block_until_ready()
        ours_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        diffusers_video()
        theirs_times.append(time.perf_counter() - t0)
    ours_s = statistics.median(ours_times) / args.batch
    theirs_s = statistics.median(theirs_times) / args.batch
    print(f"ours first call (compile + run): {first:.2f} s", flush=True)
    print(f"ours      s/video (median of {args.repeats}): {ours_s:.3f}   {ours_times}")
    print(f"diffusers s/video (median of {args.repeats}): {theirs_s:.3f}   {theirs_times}")
    print(f"ratio ours/diffusers: {ours_s / theirs_s:.3f}")
    print(f"max |final latents ours - diffusers|: {diff:.2e}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
