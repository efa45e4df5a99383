"""Shared helpers for the model/convert tests: tiny random diffusers CogVideoX transformers.

Holds no tests itself; imported by tests/test_model*.py / test_convert*.py.
"""

from __future__ import annotations

import math

import numpy as np

TINY = dict(
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=4,
    out_channels=4,
    time_embed_dim=32,
    text_embed_dim=24,
    num_layers=2,
    sample_width=8,
    sample_height=8,
    sample_frames=5,  # 2 latent frames
    patch_size=2,
    max_text_seq_length=6,
)


def random_diffusers_transformer(positions: str, seed: int = 0, **overrides):
    """A tiny CogVideoXTransformer3DModel with EVERY parameter randomised (LN affines too)."""
    import torch
    from diffusers import CogVideoXTransformer3DModel

    kwargs = dict(TINY, use_rotary_positional_embeddings=positions == "rope")
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = CogVideoXTransformer3DModel(**kwargs).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if "norm" in name and name.endswith("weight") and param.ndim == 1:
                param.copy_(1.0 + 0.2 * noise)  # LayerNorm scale
            elif param.ndim == 1:
                param.copy_(0.2 * noise)  # biases, LayerNorm shifts
            else:
                fan_in = math.prod(param.shape[1:])
                param.copy_(noise / math.sqrt(fan_in))
    return model


def diffusers_rope(model, frames: int, latent_h: int, latent_w: int):
    """The (cos, sin) tables the CogVideoX pipeline passes for a latent grid (F, H, W)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    cfg = model.config
    p = cfg.patch_size
    grid = (latent_h // p, latent_w // p)
    crops = get_resize_crop_region_for_grid(grid, cfg.sample_width // p, cfg.sample_height // p)
    return get_3d_rotary_pos_embed(
        embed_dim=cfg.attention_head_dim, crops_coords=crops, grid_size=grid, temporal_size=frames
    )


def run_diffusers(model, latents, text, timesteps, *, rope=None, mask=None) -> np.ndarray:
    """Channels-last numpy in/out around the diffusers forward (B, F, H, W, C)."""
    import torch

    hidden = torch.from_numpy(np.ascontiguousarray(latents.transpose(0, 1, 4, 2, 3)))
    kwargs = {}
    if mask is not None:
        kwargs["attention_kwargs"] = {"attention_mask": torch.from_numpy(mask)}
    with torch.no_grad():
        out = model(
            hidden_states=hidden,
            encoder_hidden_states=torch.from_numpy(text),
            timestep=torch.from_numpy(np.asarray(timesteps)),
            image_rotary_emb=rope,
            return_dict=False,
            **kwargs,
        )[0]
    return out.numpy().transpose(0, 1, 3, 4, 2)


def per_scene_reference(
    model, latents, text, timesteps, num_scenes, mask, rope=None, scene_frames=None
):
    """Independent per-scene-timestep reference built from the diffusers modules.

    ``timesteps`` (B, S): every block's adaLN (and the output norm) uses scene i's embedding for
    scene i's caption and video tokens; attention takes the boolean mask. ``scene_frames``:
    per-scene latent frames for scenes of different lengths (default: S equal scenes).
    Returns numpy (B, S*F, H, W, C_out).
    """
    import torch
    import torch.nn.functional as F
    from diffusers.models.embeddings import apply_rotary_emb

    b, sf, h, w, _ = latents.shape
    s = num_scenes
    t_len = text.shape[1] // s
    p = model.config.patch_size
    if scene_frames is None:
        v_len = (sf // s) * (h // p) * (w // p)
    else:
        v_len = torch.tensor([f * (h // p) * (w // p) for f in scene_frames])
    ts = torch.from_numpy(np.asarray(timesteps, np.float32))
    with torch.no_grad():
        temb = model.time_embedding(model.time_proj(ts.reshape(-1)).float()).reshape(b, s, -1)
        hidden = torch.from_numpy(np.ascontiguousarray(latents.transpose(0, 1, 4, 2, 3)))
        emb = model.patch_embed(torch.from_numpy(text), hidden)
        n_text = s * t_len
        x_text, x_vid = emb[:, :n_text], emb[:, n_text:]

        def per_token(values, length):  # (B, S, D) -> (B, S*length, D)
            return values.repeat_interleave(length, dim=1)

        def modulate(norm, x_text, x_vid):
            shift, scale, gate, e_shift, e_scale, e_gate = norm.linear(F.silu(temb)).chunk(6, -1)
            vid = norm.norm(x_vid) * (1 + per_token(scale, v_len)) + per_token(shift, v_len)
            txt = norm.norm(x_text) * (1 + per_token(e_scale, t_len)) + per_token(e_shift, t_len)
            return txt, vid, per_token(e_gate, t_len), per_token(gate, v_len)

        attn_mask = torch.from_numpy(mask)[:, None]
        for block in model.transformer_blocks:
            attn = block.attn1
            txt, vid, g_txt, g_vid = modulate(block.norm1, x_text, x_vid)
            z = torch.cat([txt, vid], 1)
            heads = attn.heads
            q, k, v = (
                proj(z).unflatten(-1, (heads, -1)).transpose(1, 2)
                for proj in (attn.to_q, attn.to_k, attn.to_v)
            )
            q, k = attn.norm_q(q), attn.norm_k(k)
            if rope is not None:
                q[:, :, n_text:] = apply_rotary_emb(q[:, :, n_text:], rope)
                k[:, :, n_text:] = apply_rotary_emb(k[:, :, n_text:], rope)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            o = attn.to_out[0](o.transpose(1, 2).flatten(2))
            x_text = x_text + g_txt * o[:, :n_text]
            x_vid = x_vid + g_vid * o[:, n_text:]
            txt, vid, g_txt, g_vid = modulate(block.norm2, x_text, x_vid)
            ff = block.ff(torch.cat([txt, vid], 1))
            x_text = x_text + g_txt * ff[:, :n_text]
            x_vid = x_vid + g_vid * ff[:, n_text:]
        vid = model.norm_final(x_vid)
        shift, scale = model.norm_out.linear(F.silu(temb)).chunk(2, -1)
        vid = model.norm_out.norm(vid) * (1 + per_token(scale, v_len)) + per_token(shift, v_len)
        out = model.proj_out(vid)
        c = out.shape[-1] // (p * p)
        out = out.reshape(b, sf, h // p, w // p, c, p, p).permute(0, 1, 2, 5, 3, 6, 4)
        return out.reshape(b, sf, h, w, c).numpy()
