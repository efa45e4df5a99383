"""mask2dit_5b_sft_lora: Mask²DiT stage 2 (SFT) on CogVideoX-5B as a rank-64 LoRA.

The release's SFT data recipe (configs/mask2dit_5b_sft.py: consecutive shots of one video,
p_cond 0.5 with the last scene as the target; 3 scenes x 49 frames x 480x720 = 53,328
tokens/sample; bf16 compute, full remat, scanned layers, global batch 8), trained as LoRA
(``m2dit_jax/train/lora.py``): rank 64, alpha 64 on the attention q/k/v/out projections of all
42 blocks (add FF with ``--config.lora.targets='attn/to_(q|k|v|out)$,ff/proj_(in|out)$'``),
B = 0 and A from the "lora" random stream. The 5.57 B base weights are frozen and stored once
in bf16 (``lora.base_dtype``); only the 42 x 4 x (3072 + 3072) x 64 = 66.1 M adapter values
have gradients, AdamW moments and an EMA. LoRA optimizer settings (not the release's, which
fine-tunes everything): lr 1e-4, weight decay 1e-4 (diffusers' CogVideoX LoRA script), EMA
0.999.

Command (every host of the slice/cluster runs it; see launch/recipes/)::

    python -m launch.train --config configs/mask2dit_5b_sft_lora.py \
        --workdir /mnt/runs/5b_sft_lora \
        --config.init_from=/mnt/models/CogVideoX-5b \
        --config.data.path=/mnt/latents/stage2

``init_from`` is CogVideoX-5B's pipeline folder (LoRA straight on the base model) or the
release's Mask²DiT weights (a pipeline / transformer folder, or a stage-1 workdir); it becomes
the frozen base. Export the adapters as a diffusers LoRA file, or merged into a pipeline::

    python -m launch.export --workdir /mnt/runs/5b_sft_lora --out lora/ --lora-only
    python -m launch.export --workdir /mnt/runs/5b_sft_lora --out exported/5b_sft_lora \
        --merge-lora [--scale 1.0] [--base /mnt/models/CogVideoX-5b]
    python -m launch.sample --model /mnt/models/CogVideoX-5b \
        --lora lora/pytorch_lora_weights.safetensors --lora-scale 1.0 \
        --script examples/three_scenes.yaml --out out.mp4

Memory first: ``python -m launch.compile --config configs/mask2dit_5b_sft_lora.py --devices 8``
(or ``--topology v5p-8``).
"""

from __future__ import annotations

from configs.release_recipe import release_config


def get_config():
    config = release_config("cogvideox_5b", stage=2, name="mask2dit_5b_sft_lora")
    config.lora.rank = 64
    config.lora.alpha = 64.0
    config.lora.targets = "attn/to_q$,attn/to_k$,attn/to_v$,attn/to_out$"
    config.lora.base_dtype = "bfloat16"
    config.optim.learning_rate = 1e-4
    config.optim.weight_decay = 1e-4
    config.optim.ema_decay = 0.999
    return config
