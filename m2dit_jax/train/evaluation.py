"""The held-out evaluation of the trainer: its own data split, fixed noise, params and EMA.

``config.eval`` (``defaults.eval_defaults``) names the split: the ``data`` section with the
eval overrides (synthetic_shapes: the held-out scripts; manifest/latents: ``eval.path``; TFDS:
``eval.tfds_split``). The first ``eval.batches`` batches of that split (data order seeded by
``eval.seed``) are read once and kept on the host; every evaluation scores the params and the
EMA on them with ``eval_loss_fn``: evenly spaced timesteps and noise from ``eval.seed``, so the
numbers of different runs and different steps are comparable.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from m2dit_jax.rng import stream
from m2dit_jax.train import distributed
from m2dit_jax.train.program import make_loss
from m2dit_jax.train.step import PACK_FILL_KEY, SAMPLES_KEY, SCENE_FRAMES_KEY, batch_shardings


def eval_data_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The data section of the held-out split."""
    e = config.eval
    data = ml_collections.ConfigDict(config.data.to_dict())
    if e.source:
        data.source = e.source
    if e.path:
        data.path = e.path
    if e.tfds_split:
        data.tfds_split = e.tfds_split
    if "synthetic_split" in data:
        data.synthetic_split = e.synthetic_split
    return data


class Evaluator:
    """Scores a train state's params and EMA on fixed held-out batches."""

    def __init__(self, config, mesh, parts, param_shardings, dataset_factory, to_host):
        self.config, self.mesh, self.parts = config, mesh, parts
        e = config.eval
        self.num_batches = int(e.batches)
        batch_size = int(e.batch_size or config.train.batch_size)
        dataset = dataset_factory(
            eval_data_config(config),
            seed=int(e.seed),
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            batch_size=distributed.local_batch_size(batch_size),
        )
        self.host_batches = [to_host(next(dataset)) for _ in range(self.num_batches)]
        # per-batch static layouts (scenes of their own lengths), None = equal scenes
        self.scene_frames = [b.pop(SCENE_FRAMES_KEY, None) for b in self.host_batches]
        self.samples = [b.pop(SAMPLES_KEY, None) for b in self.host_batches]
        for b in self.host_batches:
            b.pop(PACK_FILL_KEY, None)
        close = getattr(dataset, "close", None)
        if callable(close):
            close()
        loss = make_loss(config, held_out=True)
        root = stream(int(e.seed), "eval")

        def eval_loss(params, batch, i, scene_frames=None, samples=None):
            kwargs = {} if scene_frames is None else {"scene_frames": scene_frames}
            if samples is not None:
                kwargs["samples"] = samples
            value, _ = loss(parts.bind(params), batch, jax.random.fold_in(root, i), **kwargs)
            return value

        self.shardings = batch_shardings(mesh, self.host_batches[0]) if self.host_batches else {}
        self.fn = jax.jit(
            eval_loss,
            in_shardings=(param_shardings, self.shardings, None),
            static_argnames=("scene_frames", "samples"),
        )

    def __call__(self, state: dict[str, Any]) -> dict[str, float]:
        """{"loss", "loss_ema"}: means over the held-out batches."""
        totals = {"loss": 0.0, "loss_ema": 0.0}
        with jax.set_mesh(self.mesh):
            for i, host in enumerate(self.host_batches):
                batch = distributed.to_global(host, self.shardings)
                frames, samples = self.scene_frames[i], self.samples[i]
                for name, params in (("loss", state["params"]), ("loss_ema", state["ema"])):
                    totals[name] += float(self.fn(params, batch, jnp.int32(i), frames, samples))
        return {k: v / max(self.num_batches, 1) for k, v in totals.items()}
