"""mask2dit_5b_sft: Mask²DiT on CogVideoX-5B, stage 2 (SFT).

Consecutive shots of one video, p_cond 0.5 with the last scene as the target.

The release's recipe (configs/release_recipe.py): AdamW lr 1e-5, warm-up 100, weight decay
0.03, eps 1e-10, bf16 + full remat, global batch 8, 3 scenes x 49 frames x 480x720
(53,328 tokens/sample).

Command (every host of the slice/cluster runs it; see launch/recipes/)::

    python -m launch.train --config configs/mask2dit_5b_sft.py --workdir /mnt/runs/5b_sft \
        --config.init_from=/mnt/runs/5b_pretrain \
        --config.data.path=/mnt/latents/stage2

``init_from`` is the stage-1 workdir (its newest checkpoint's EMA weights; ``WORKDIR@STEP`` for
another step, ``--config.init_from_weights=params`` for the raw weights; a local or mounted
path such as a gcsfuse mount), or CogVideoX-5B's pipeline folder to skip stage 1. It is
applied only when this workdir has no checkpoint yet. To sample or share stage 1, export it as
a pipeline folder (also a valid ``init_from``): ``python -m launch.export --workdir
/mnt/runs/5b_pretrain --out exported/5b_pretrain --base /path/to/CogVideoX-5b``.

What it produces: orbax checkpoints every 250 steps (last 3 kept; resumes exactly on restart or
preemption), TensorBoard + metrics.jsonl with loss (total and per scene), grad norm, lr,
step time, video tokens/s and MFU. `python -m launch.compile --config
configs/mask2dit_5b_sft.py --devices 8` prints the per-device memory and step FLOPs first.
"""

from __future__ import annotations

from configs.release_recipe import release_config


def get_config():
    return release_config("cogvideox_5b", stage=2, name="mask2dit_5b_sft")
