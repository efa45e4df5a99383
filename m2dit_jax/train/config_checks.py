"""Config validation that runs before any model is built or any step compiled.

``check_config(config, num_devices, process_count)`` collects every problem it finds and raises
one ``ConfigError`` (a ValueError) that names the offending fields, e.g.::

    train.batch_size=12 is not divisible by the data-parallel size mesh.data*mesh.fsdp=8
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

from m2dit_jax.data.config import FOLD_ENCODERS
from m2dit_jax.diffusion.objective import check_loss_weighting, check_timestep_sampling
from m2dit_jax.layout import SceneLayout
from m2dit_jax.sharding import MESH_AXES, parse_logical_rules
from m2dit_jax.train import defaults

SCHEDULES = ("constant", "cosine", "linear")
DTYPES = ("float32", "bfloat16", "float16")
TOP_LEVEL = (
    "name",
    "seed",
    "init_from",
    "init_from_weights",
    "model",
    "data",
    "diffusion",
    "optim",
    "mesh",
    "train",
    "eval",
    "distributed",
    "lora",
)
OPTIONAL_TOP_LEVEL = ("lora",)  # configs written before LoRA existed lack it (= off)


class ConfigError(ValueError):
    """A config that cannot work; the message lists every problem with its field name."""


def dcn_mesh_shape(mesh_cfg: Any) -> dict[str, int]:
    """{axis: how many TPU slices / GPU nodes it spans} from ``mesh.dcn_<axis>`` (default 1);
    the ``dcn`` argument of ``m2dit_jax.sharding.make_mesh``."""
    return {a: int(mesh_cfg.get(f"dcn_{a}", 1)) for a in MESH_AXES}


def resolve_mesh_shape(mesh_cfg: Any, num_devices: int) -> dict[str, int]:
    """Mesh section -> full {axis: size} with the -1 entry filled; raises ConfigError on mismatch.

    ``mesh.<axis>`` is the size within one TPU slice / GPU node and ``mesh.dcn_<axis>`` the
    number of slices/nodes it spans, so the full axis is their product and the -1 entry fills
    ``num_devices / prod(dcn)`` devices per slice. ``mesh.logical_rules`` is validated too.
    """
    sizes = {a: int(mesh_cfg.get(a, 1)) for a in MESH_AXES}  # num_devices is not an axis
    dcn = dcn_mesh_shape(mesh_cfg)
    bad = [f"mesh.{a}={s}" for a, s in sizes.items() if s == 0 or s < -1]
    if bad:
        raise ConfigError(f"mesh sizes must be positive or -1: {', '.join(bad)}")
    bad = [f"mesh.dcn_{a}={s}" for a, s in dcn.items() if s < 1]
    if bad:
        raise ConfigError(f"mesh.dcn_* sizes must be positive (1 = one slice): {', '.join(bad)}")
    try:
        parse_logical_rules(mesh_cfg.get("logical_rules", ""))
    except ValueError as e:
        raise ConfigError(f"mesh.logical_rules: {e}") from None
    slices = math.prod(dcn.values())
    dcn_text = " x ".join(f"mesh.dcn_{a}={s}" for a, s in dcn.items() if s != 1)
    if num_devices % slices:
        raise ConfigError(
            f"{num_devices} devices do not divide into the {slices} slices/nodes of the DCN "
            f"mesh ({dcn_text})"
        )
    per_slice = num_devices // slices
    where = f" per slice ({per_slice} = {num_devices} / {slices} slices)" if slices > 1 else ""
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ConfigError(
            f"at most one mesh axis may be -1, got {', '.join('mesh.' + a for a in free)}"
        )
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if per_slice % fixed:
            raise ConfigError(
                f"{per_slice} devices{where} are not divisible by the fixed mesh axes "
                f"({', '.join(f'mesh.{a}={s}' for a, s in sizes.items() if s != -1)})"
            )
        sizes[free[0]] = per_slice // fixed
    if math.prod(sizes.values()) != per_slice:
        raise ConfigError(
            f"mesh {sizes} needs {math.prod(sizes.values())} devices{where} but "
            f"{per_slice} are present"
        )
    return {a: sizes[a] * dcn[a] for a in MESH_AXES}


def _unknown_keys(section: Any, reference: Any, prefix: str) -> list[str]:
    return [f"{prefix}.{k}" for k in section.keys() if k not in reference]


def _model_reference_keys() -> set[str] | None:
    from m2dit_jax.model import get_model_config

    return set(get_model_config("tiny").keys())


def _data_reference_keys() -> set[str] | None:
    from m2dit_jax.data import default_data_config

    return set(default_data_config().keys())


def model_layout(config: Any) -> SceneLayout:
    """The SceneLayout a config trains on (scenes from data, grid from the model section)."""
    m = config.model
    return SceneLayout.from_latents(
        num_scenes=int(config.data.num_scenes),
        text_len=int(m.text_len),
        latent_frames=int(m.sample_frames),
        latent_h=int(m.sample_height),
        latent_w=int(m.sample_width),
        patch_size=int(m.patch_size),
        patch_t=1,
        text_pad_to=int(m.get("text_pad_to", 1)),
    )


def check_config(
    config: ml_collections.ConfigDict, *, num_devices: int, process_count: int = 1
) -> dict[str, int]:
    """Validates a full training config; returns the resolved mesh shape.

    Raises:
      ConfigError naming every field that makes the run impossible.
    """
    errors: list[str] = []
    missing = [k for k in TOP_LEVEL if k not in config and k not in OPTIONAL_TOP_LEVEL]
    if missing:
        raise ConfigError(f"config is missing sections: {', '.join(missing)}")
    errors += [f"{k} (unknown top-level key)" for k in config.keys() if k not in TOP_LEVEL]
    for name, ref in (
        ("diffusion", defaults.diffusion_defaults()),
        ("optim", defaults.optim_defaults()),
        ("mesh", defaults.mesh_defaults()),
        ("train", defaults.train_defaults()),
        ("eval", defaults.eval_defaults()),
        ("distributed", defaults.distributed_defaults()),
        ("lora", defaults.lora_defaults()),
    ):
        if name in config:
            errors += [f"{k} (unknown key)" for k in _unknown_keys(config[name], ref, name)]
    model_keys, data_keys = _model_reference_keys(), _data_reference_keys()
    errors += [f"{k} (unknown key)" for k in _unknown_keys(config.model, model_keys, "model")]
    errors += [f"{k} (unknown key)" for k in _unknown_keys(config.data, data_keys, "data")]
    if errors:
        raise ConfigError("unknown config keys: " + "; ".join(errors))

    use = int(config.mesh.num_devices)
    if use < 0 or use > num_devices:
        errors.append(f"mesh.num_devices={use} must be in [0, {num_devices}] (0 = all devices)")
    elif use:
        if process_count > 1:
            errors.append(f"mesh.num_devices={use} is single-process only; use all devices")
        num_devices = use
    try:
        mesh = resolve_mesh_shape(config.mesh, num_devices)
    except ConfigError as e:
        errors.append(str(e))
        mesh = None

    t, o, m = config.train, config.optim, config.model
    for field, value in (
        ("train.num_steps", t.num_steps),
        ("train.batch_size", t.batch_size),
        ("train.log_every", t.log_every),
        ("train.checkpoint_every", t.checkpoint_every),
        ("train.keep_checkpoints", t.keep_checkpoints),
        ("train.max_consecutive_nonfinite", t.max_consecutive_nonfinite),
        ("train.preemption_check_every", t.preemption_check_every),
        ("optim.grad_accum_steps", o.grad_accum_steps),
    ):
        if int(value) <= 0:
            errors.append(f"{field}={value} must be positive")
    if o.learning_rate <= 0:
        errors.append(f"optim.learning_rate={o.learning_rate} must be positive")
    if o.warmup_steps < 0:
        errors.append(f"optim.warmup_steps={o.warmup_steps} must be >= 0")
    if o.schedule not in SCHEDULES:
        errors.append(f"optim.schedule={o.schedule!r} must be one of {SCHEDULES}")
    if not 0.0 <= o.ema_decay < 1.0:
        errors.append(f"optim.ema_decay={o.ema_decay} must be in [0, 1)")
    if o.mu_dtype not in ("",) + DTYPES:
        errors.append(f"optim.mu_dtype={o.mu_dtype!r} must be '' or one of {DTYPES}")
    if config.diffusion.target_scene not in ("last", "random"):
        errors.append(
            f"diffusion.target_scene={config.diffusion.target_scene!r} must be 'last' or 'random'"
        )
    cond_mask_mode = config.diffusion.get("cond_mask_mode", "mask2dit")
    if cond_mask_mode not in ("mask2dit", "causal_conditions"):
        errors.append(
            f"diffusion.cond_mask_mode={cond_mask_mode!r} must be 'mask2dit' or 'causal_conditions'"
        )
    elif cond_mask_mode == "causal_conditions" and config.diffusion.target_scene != "last":
        errors.append(
            "diffusion.cond_mask_mode='causal_conditions' needs diffusion.target_scene='last' "
            f"(conditions must lead the window), got {config.diffusion.target_scene!r}"
        )
    if not 0.0 <= config.diffusion.p_cond <= 1.0:
        errors.append(f"diffusion.p_cond={config.diffusion.p_cond} must be in [0, 1]")
    if not 0.0 <= config.diffusion.caption_dropout <= 1.0:
        errors.append(
            f"diffusion.caption_dropout={config.diffusion.caption_dropout} must be in [0, 1]"
        )
    d = config.diffusion
    for check, args in (
        (check_timestep_sampling, ("timestep_sampling", "uniform", "logit_std", 1.0)),
        (check_loss_weighting, ("loss_weighting", "none", "min_snr_gamma", 5.0)),
    ):
        try:
            check(d.get(args[0], args[1]), d.get(args[2], args[3]))
        except ValueError as e:
            errors.append(f"diffusion.{e}")
    if config.init_from_weights not in ("ema", "params"):
        errors.append(f"init_from_weights={config.init_from_weights!r} must be 'ema' or 'params'")
    if config.distributed.initialize not in ("auto", "always", "never"):
        errors.append(
            f"distributed.initialize={config.distributed.initialize!r} must be auto|always|never"
        )
    for field in ("dtype", "param_dtype"):
        if field in m and m[field] not in DTYPES:
            errors.append(f"model.{field}={m[field]!r} must be one of {DTYPES}")

    # Batch divisibility: global batch -> processes, micro-batches, data-parallel shards.
    batch, accum = int(t.batch_size), max(int(o.grad_accum_steps), 1)
    if batch > 0 and batch % process_count:
        errors.append(
            f"train.batch_size={batch} is not divisible by the process count {process_count}"
        )
    if batch > 0 and batch % accum:
        errors.append(
            f"train.batch_size={batch} is not divisible by optim.grad_accum_steps={accum}"
        )
    if mesh is not None and batch > 0 and batch % accum == 0:
        dp = mesh["data"] * mesh["fsdp"]
        micro = batch // accum
        if micro % dp:
            what = "train.batch_size" if accum == 1 else "train.batch_size/optim.grad_accum_steps"
            errors.append(
                f"{what}={micro} is not divisible by the data-parallel size "
                f"mesh.data*mesh.fsdp={dp}"
            )
    if mesh is not None and int(m.num_heads) % mesh["tensor"]:
        errors.append(
            f"model.num_heads={m.num_heads} is not divisible by mesh.tensor={mesh['tensor']}"
        )
    elif mesh is not None and int(m.num_heads) % (mesh["tensor"] * mesh["context"]):
        errors.append(
            f"model.num_heads={m.num_heads} is not divisible by mesh.tensor*mesh.context="
            f"{mesh['tensor'] * mesh['context']} (context parallelism redistributes heads)"
        )

    # Sequence layout and the context axis.
    try:
        layout = model_layout(config)
    except ValueError as e:
        errors.append(f"model.sample_* / model.patch_size / data.num_scenes: {e}")
        layout = None
    if layout is not None and mesh is not None and layout.seq_len % mesh["context"]:
        errors.append(
            f"sequence length {layout.seq_len} (data.num_scenes={config.data.num_scenes}, "
            f"model.text_len={m.text_len}, model.sample_*) is not divisible by "
            f"mesh.context={mesh['context']}"
        )

    errors += _data_model_agreement(config)
    errors += _eval_errors(config)
    errors += _lora_errors(config)
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
    return mesh


def _lora_errors(config: Any) -> list[str]:
    import re

    from m2dit_jax.train import lora as lora_lib

    lo = config.get("lora")
    if lo is None:
        return []
    errors = []
    if not isinstance(lo.rank, int) or lo.rank < 0:
        errors.append(f"lora.rank={lo.rank!r} must be an int >= 0 (0 = off)")
    if float(lo.alpha) < 0:
        errors.append(f"lora.alpha={lo.alpha} must be >= 0 (0 = rank)")
    if lo.init not in lora_lib.INITS:
        errors.append(f"lora.init={lo.init!r} must be one of {lora_lib.INITS}")
    if not 0.0 <= float(lo.get("dropout", 0.0)) < 1.0:
        errors.append(f"lora.dropout={lo.dropout} must be in [0, 1) (0 = off)")
    if lo.base_dtype not in lora_lib.BASE_DTYPES:
        errors.append(f"lora.base_dtype={lo.base_dtype!r} must be one of {lora_lib.BASE_DTYPES}")
    if errors or int(lo.rank) == 0:
        return errors
    try:
        _, problems = lora_lib.select_targets(
            str(lo.targets), int(config.model.num_layers), bool(config.model.scan_layers)
        )
    except re.error as e:
        return [f"lora.targets={lo.targets!r}: bad regular expression: {e}"]
    return problems


def _eval_errors(config: Any) -> list[str]:
    """The eval section must name held-out data unless the source has a held-out split."""
    e, d = config.eval, config.data
    errors = [
        f"eval.{k}={e[k]} must be >= 0" for k in ("every", "batches", "batch_size") if e[k] < 0
    ]
    if e.synthetic_split not in ("train", "heldout"):
        errors.append(f"eval.synthetic_split={e.synthetic_split!r} must be 'train' or 'heldout'")
    source = e.source or d.source
    if int(e.batches) > 0 and source != "synthetic_shapes":
        same_path = not e.path or e.path == d.get("path", "")
        same_split = source != "tfds" or not e.tfds_split or e.tfds_split == d.tfds_split
        if same_path and same_split:
            errors.append(
                f"eval.batches={e.batches} but no held-out data for source {source!r}: set "
                "eval.path (manifest / latents of the held-out split) or eval.tfds_split, "
                "or eval.batches=0"
            )
    return errors


def _data_model_agreement(config: Any) -> list[str]:
    """The data section must produce what the model section consumes."""
    d, m = config.data, config.model
    errors = []
    if d.get("text_encoder", "none") == "hashed":
        if int(d.text_len) != int(m.text_len):
            errors.append(f"data.text_len={d.text_len} != model.text_len={m.text_len}")
        if int(d.text_dim) != int(m.text_dim):
            errors.append(f"data.text_dim={d.text_dim} != model.text_dim={m.text_dim}")
    encoder = d.get("video_encoder", "none")
    if encoder in FOLD_ENCODERS:
        pt, ps = int(d.patch_t), int(d.patch_s)
        channels = 3 * pt * ps * ps
        what = f"data.patch_t={pt}, data.patch_s={ps} give"
        if encoder == "conv":  # the learned codec halves the fold's grid
            from m2dit_jax.encoders.conv_autoencoder import read_channels

            try:
                channels = read_channels(str(d.autoencoder))
            except ValueError as err:
                return [f"data.autoencoder: {err}"]
            ps *= 2
            what = f"data.autoencoder={d.autoencoder} gives"
        if channels != int(m.in_channels):
            errors.append(
                f"{what} {channels} latent channels but model.in_channels={m.in_channels}"
            )
        for dname, mname, size, p in (
            ("frames", "sample_frames", d.frames, pt),
            ("height", "sample_height", d.height, ps),
            ("width", "sample_width", d.width, ps),
        ):
            if int(size) % p or int(size) // p != int(m[mname]):
                errors.append(
                    f"data.{dname}={size} with patch {p} does not give model.{mname}={m[mname]}"
                )
    return errors
