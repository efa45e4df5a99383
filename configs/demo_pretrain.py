"""demo_pretrain: stage 1 of `make demo` — single-scene pretraining (see ``configs/demo.py``).

Command (2-core CPU, ~8 minutes)::

    python -m launch.train --config configs/demo_pretrain.py --workdir runs/demo/pretrain

It trains the demo model on 1-scene clips of the synthetic shapes task (no mask 2) and writes
checkpoints that stage 2 starts from (``--config.init_from=runs/demo/pretrain``).
"""

from __future__ import annotations

from configs import demo


def get_config():
    return demo.get_pretrain_config()
