"""mask2dit_5b_pretrain: Mask²DiT on CogVideoX-5B, stage 1 (pretrain).

Each sample is 3 unrelated single-scene clips with their own captions; p_cond 0.

The release's recipe (configs/release_recipe.py): AdamW lr 1e-5, warm-up 100, weight decay
0.03, eps 1e-10, bf16 + full remat, global batch 8, 3 scenes x 49 frames x 480x720
(53,328 tokens/sample).

Command (every host of the slice/cluster runs it; see launch/recipes/)::

    python -m launch.train --config configs/mask2dit_5b_pretrain.py \
        --workdir /mnt/runs/5b_pretrain \
        --config.init_from=/path/to/CogVideoX-5B/transformer \
        --config.data.path=/mnt/latents/stage1

What it produces: orbax checkpoints every 250 steps (last 3 kept; resumes exactly on restart or
preemption), TensorBoard + metrics.jsonl with loss (total and per scene), grad norm, lr,
step time, video tokens/s and MFU. `python -m launch.compile --config
configs/mask2dit_5b_pretrain.py --devices 8` prints the per-device memory and step FLOPs first.
"""

from __future__ import annotations

from configs.release_recipe import release_config


def get_config():
    return release_config("cogvideox_5b", stage=1, name="mask2dit_5b_pretrain")
