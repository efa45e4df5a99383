"""Inference bundles: a self-contained folder a sampler can load without the training config.

    BUNDLE/
      config.json          {"format": "m2dit_bundle", "version": 1, "model": {...model config},
                            "encoders": {"text": {...}, "video": {...}}, "video": {num_scenes,
                            frames, height, width, fps}, "schedule": {...}, "weights_dtype",
                            "source": {...}}
      model.safetensors    the (EMA) transformer weights, keys = NNX state paths joined by "/"
      README.md            what this is and the exact command to sample from it

``write_bundle`` takes a flat ``{path: array}`` dict (see ``flat_params``); ``load_bundle``
rebuilds the ``Mask2DiT`` from the JSON config and fills in the weights (abstract init: no
random initialisation, so it is cheap at any size). Weights may be stored in bfloat16; they are
cast back to the model's ``param_dtype`` on load.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from m2dit_jax.encoders.pixel import SpaceToDepthAutoencoder
from m2dit_jax.encoders.text import HashedWordEncoder

BUNDLE_FORMAT = "m2dit_bundle"
BUNDLE_VERSION = 1
WEIGHT_DTYPES = ("float32", "bfloat16")
TEXT_ENCODERS = ("hashed",)
VIDEO_ENCODERS = ("space_to_depth", "conv")
AUTOENCODER_FILE = "autoencoder.npz"  # a "conv" video encoder's weights, in the bundle


def path_key(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def flat_params(tree: Any) -> dict[str, np.ndarray]:
    """NNX module / nnx.State / nested dict of arrays -> {"a/b/kernel": numpy array}."""
    if isinstance(tree, nnx.Module):
        tree = nnx.state(tree, nnx.Param)
    if isinstance(tree, nnx.State):
        items = [(path, v) for path, v in nnx.to_flat_state(tree)]
    else:
        items = [
            (tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path), v)
            for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]
        ]
    out = {}
    for path, value in items:
        value = value.get_value() if isinstance(value, nnx.Variable) else value
        out[path_key(path)] = np.asarray(jax.device_get(value))
    return out


def _json_ready(value: Any) -> Any:
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclasses.dataclass
class Bundle:
    """A loaded bundle: the model plus everything needed to turn captions into videos."""

    model: Any
    model_config: ml_collections.ConfigDict
    text_encoder: Any
    autoencoder: Any
    video: dict
    meta: dict
    path: str


def check_encoders(encoders: dict, model_config: Any) -> None:
    """Validates the encoder section of a bundle against the model config."""
    text, video = encoders.get("text"), encoders.get("video")
    if not isinstance(text, dict) or text.get("kind") not in TEXT_ENCODERS:
        raise ValueError(f"encoders.text.kind must be one of {TEXT_ENCODERS}, got {text!r}")
    if not isinstance(video, dict) or video.get("kind") not in VIDEO_ENCODERS:
        raise ValueError(f"encoders.video.kind must be one of {VIDEO_ENCODERS}, got {video!r}")
    if text["text_len"] != model_config["text_len"] or text["dim"] != model_config["text_dim"]:
        raise ValueError(
            f"text encoder ({text['text_len']} tokens x {text['dim']}) does not match the model "
            f"(text_len={model_config['text_len']}, text_dim={model_config['text_dim']})"
        )
    scale = video.get("detail_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"encoders.video.detail_scale must be a number > 0, got {scale!r}")
    channels = 3 * video["patch_t"] * video["patch_s"] ** 2
    if video["kind"] == "conv":
        channels = video.get("channels")
        if not isinstance(video.get("file"), str) or not video["file"]:
            raise ValueError("encoders.video.file (the conv autoencoder's weights) is missing")
    if channels != model_config["in_channels"]:
        raise ValueError(
            f"video encoder gives {channels} latent channels, model in_channels="
            f"{model_config['in_channels']}"
        )


def make_encoders(encoders: dict, root: str = "") -> tuple[Any, Any]:
    """(text encoder, autoencoder) of a bundle's encoder section; ``root``: the bundle folder
    (a "conv" video encoder's ``file`` is relative to it)."""
    text, video = encoders["text"], encoders["video"]
    text_encoder = HashedWordEncoder(text["text_len"], text["dim"], text.get("seed", 0))
    if video["kind"] == "conv":
        from m2dit_jax.encoders.conv_autoencoder import ConvAutoencoder

        ae = ConvAutoencoder.load(os.path.join(root, video["file"]))
        if (ae.patch_t, ae.patch_s, ae.channels) != (
            video["patch_t"],
            video["patch_s"],
            video["channels"],
        ):
            raise ValueError(
                f"{video['file']}: patch_t={ae.patch_t}, patch_s={ae.patch_s}, channels="
                f"{ae.channels} differ from the bundle's config.json {video}"
            )
        return text_encoder, ae
    return (
        text_encoder,
        # detail_scale: bundles written before it existed are the plain fold
        SpaceToDepthAutoencoder(
            video["patch_t"], video["patch_s"], float(video.get("detail_scale", 1.0))
        ),
    )


_README = """# Mask²DiT inference bundle

Exported by `launch.export` from `{workdir}` (step {step}, {which} weights, stored as
{dtype}). Model: {layers} layers x {heads} heads x {head_dim}, {scenes} scenes of {frames}
frames at {height}x{width} px; text encoder `{text}`, video encoder `{video}`.

Sample a video from a script (see `examples/*.yaml` in the repository):

    python -m launch.sample --model {path} --script examples/three_scenes.yaml --out out.mp4

Continue a video scene by scene:

    python -m launch.sample --model {path} --extend out.mp4 \\
        --script examples/two_more_scenes.yaml --out longer.mp4

`config.json` holds the model and encoder configuration; `model.safetensors` the transformer
weights (keys are NNX state paths joined by "/").
"""


def write_bundle(
    out_dir: str,
    params: dict[str, np.ndarray],
    *,
    model_config: Any,
    encoders: dict,
    video: dict,
    weights_dtype: str = "float32",
    source: dict | None = None,
    schedule: dict | None = None,
) -> str:
    """Writes a bundle folder; returns its path.

    Args:
      params: flat ``{path: array}`` transformer weights (``flat_params``), EMA or raw.
      model_config: the model ConfigDict / dict (``m2dit_jax.model.get_model_config`` fields).
      encoders: ``{"text": {"kind": "hashed", "text_len", "dim", "seed"},
        "video": {"kind": "space_to_depth", "patch_t", "patch_s", "detail_scale" (optional,
        1.0 = the plain fold)}}``.
      video: ``{"num_scenes", "frames", "height", "width", "fps"}`` — pixel frames per scene.
      weights_dtype: "float32" or "bfloat16" (halves the file; cast back on load).
      source: free-form provenance (workdir, step, which weights) recorded in config.json.
      schedule: ``CogVideoXSchedule.create`` keyword arguments the model was trained with
        (e.g. ``{"snr_shift_scale": 1.0, "num_train_timesteps": 1000}``).
    """
    if weights_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weights_dtype must be one of {WEIGHT_DTYPES}, got {weights_dtype!r}")
    if not params:
        raise ValueError("params is empty: nothing to export")
    model_dict = _json_ready(model_config)
    check_encoders(encoders, model_dict)
    for key in ("num_scenes", "frames", "height", "width"):
        if not isinstance(video.get(key), int) or video[key] <= 0:
            raise ValueError(f"video.{key} must be a positive int, got {video.get(key)!r}")
    os.makedirs(out_dir, exist_ok=True)
    if encoders["video"]["kind"] == "conv":
        source_file = encoders["video"]["file"]
        if not os.path.isfile(source_file):
            raise ValueError(f"the conv autoencoder's weights {source_file!r} do not exist")
        shutil.copyfile(source_file, os.path.join(out_dir, AUTOENCODER_FILE))
        encoders = {**encoders, "video": {**encoders["video"], "file": AUTOENCODER_FILE}}
    target = jax.numpy.bfloat16 if weights_dtype == "bfloat16" else np.float32
    arrays = {
        k: np.ascontiguousarray(np.asarray(v, np.float32).astype(target)) for k, v in params.items()
    }
    save_file(arrays, os.path.join(out_dir, "model.safetensors"))
    source = dict(source or {})
    config = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "model": model_dict,
        "encoders": _json_ready(encoders),
        "video": _json_ready({"fps": 4, **video}),
        "weights_dtype": weights_dtype,
        "source": _json_ready(source),
        "schedule": _json_ready(schedule or {}),
    }
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    readme = _README.format(
        workdir=source.get("workdir", "?"),
        step=source.get("step", "?"),
        which=source.get("weights", "EMA"),
        dtype=weights_dtype,
        layers=model_dict["num_layers"],
        heads=model_dict["num_heads"],
        head_dim=model_dict["head_dim"],
        scenes=video["num_scenes"],
        frames=video["frames"],
        height=video["height"],
        width=video["width"],
        text=encoders["text"]["kind"],
        video=encoders["video"]["kind"],
        path=out_dir,
    )
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(readme)
    return out_dir


def read_bundle_config(path: str) -> dict:
    """Reads and validates ``config.json`` of a bundle folder."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise ValueError(f"{path} is not an inference bundle: no config.json (run launch.export)")
    with open(cfg_path) as f:
        config = json.load(f)
    if config.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{cfg_path}: format is {config.get('format')!r}, not {BUNDLE_FORMAT!r}")
    if config.get("version") != BUNDLE_VERSION:
        raise ValueError(
            f"{cfg_path}: bundle version {config.get('version')} is not supported "
            f"(this code reads version {BUNDLE_VERSION})"
        )
    for key in ("model", "encoders", "video"):
        if key not in config:
            raise ValueError(f"{cfg_path}: missing {key!r}")
    return config


def assign_params(abstract_model: Any, params: dict[str, np.ndarray], where: str = "") -> Any:
    """Returns a concrete model: ``abstract_model``'s graph with every Param taken from
    ``params`` (cast to the abstract dtype). Missing, unexpected or mis-shaped keys are errors."""
    graphdef, state = nnx.split(abstract_model)
    flat = nnx.to_flat_state(state)
    expected = {path_key(p) for p, v in flat if isinstance(v, nnx.Param)}
    missing, unexpected = sorted(expected - set(params)), sorted(set(params) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{where}weights do not match the model: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}"
        )
    leaves = []
    for path, var in flat:
        key = path_key(path)
        abstract = var.get_value()
        if key in params:
            value = params[key]
            if tuple(value.shape) != tuple(abstract.shape):
                raise ValueError(
                    f"{where}weight {key} has shape {value.shape}, model expects {abstract.shape}"
                )
            leaves.append((path, var.replace(jax.numpy.asarray(value, abstract.dtype))))
        else:  # non-Param state (e.g. RNG counters) keeps a concrete zero-initialised value
            leaves.append((path, var.replace(jax.numpy.zeros(abstract.shape, abstract.dtype))))
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def load_bundle(path: str) -> Bundle:
    """Loads a bundle folder -> Bundle(model, model_config, text_encoder, autoencoder, ...)."""
    from m2dit_jax.model import Mask2DiT

    config = read_bundle_config(path)
    model_config = ml_collections.ConfigDict(config["model"])
    check_encoders(config["encoders"], config["model"])
    weights_path = os.path.join(path, "model.safetensors")
    if not os.path.isfile(weights_path):
        raise ValueError(f"{path}: missing model.safetensors")
    params = load_file(weights_path)
    abstract = nnx.eval_shape(lambda: Mask2DiT(model_config, rngs=nnx.Rngs(0)))
    model = assign_params(abstract, params, where=f"{weights_path}: ")
    text_encoder, autoencoder = make_encoders(config["encoders"], path)
    return Bundle(
        model=model,
        model_config=model_config,
        text_encoder=text_encoder,
        autoencoder=autoencoder,
        video=config["video"],
        meta=config,
        path=path,
    )
