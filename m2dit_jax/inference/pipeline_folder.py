"""diffusers CogVideoX pipeline folders, plus the ``m2dit.json`` we add to them.

    PIPELINE/
      model_index.json            {"_class_name": "CogVideoXPipeline", "transformer": [...], ...}
      transformer/                config.json + diffusion_pytorch_model*.safetensors (+ index)
      vae/                        config.json + diffusion_pytorch_model*.safetensors
      text_encoder/               config.json + model*.safetensors (T5EncoderModel)
      tokenizer/                  spiece.model (+ tokenizer_config.json, ...)
      scheduler/                  scheduler_config.json (CogVideoXDDIMScheduler / DPM)
      m2dit.json                  optional, ours (below)

``m2dit.json`` (written by ``launch.export``; a stock CogVideoX folder has none):
``{"format": "m2dit_pipeline", "version": 1, "num_scenes": S sampled jointly, "frames": pixel
frames per scene, "height", "width", "fps", "text_len", "positions": "diffusers" | "release",
"schedule": {the training schedule}, "source": {provenance}}``. Without it a folder samples
one scene of the transformer's sample size (49 x 480 x 720 for CogVideoX) at 8 fps.

``read_pipeline_folder`` checks every part before any weight is read and names the subfolder
and file that is missing or odd; ``schedule_from_scheduler_config`` maps a scheduler config
onto ``CogVideoXSchedule`` (refusing settings our samplers do not implement).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
from typing import Any

from m2dit_jax.diffusion.schedule import TIMESTEP_SPACINGS, CogVideoXSchedule

MODEL_INDEX = "model_index.json"
M2DIT_JSON = "m2dit.json"
M2DIT_FORMAT = "m2dit_pipeline"
M2DIT_VERSION = 1
POSITION_CONVENTIONS = ("diffusers", "release")
PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
SCHEDULER_CLASSES = ("CogVideoXDDIMScheduler", "CogVideoXDPMScheduler")
DEFAULT_FPS = 8

COGVIDEOX_MODEL_INDEX = {
    "_class_name": "CogVideoXPipeline",
    "_diffusers_version": "0.42.1",
    "scheduler": ["diffusers", "CogVideoXDDIMScheduler"],
    "text_encoder": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "T5Tokenizer"],
    "transformer": ["diffusers", "CogVideoXTransformer3DModel"],
    "vae": ["diffusers", "AutoencoderKLCogVideoX"],
}


def is_pipeline_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MODEL_INDEX))


def _read_json(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise ValueError(f"{what}: missing {path}")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{what}: cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{what}: {path} is not a JSON object")
    return data


def _has_weights(folder: str) -> bool:
    return any(n.endswith((".safetensors", ".safetensors.index.json")) for n in os.listdir(folder))


@dataclasses.dataclass(frozen=True)
class PipelineFolder:
    """The checked parts of a pipeline folder (configs read, no weights)."""

    path: str
    model_index: dict
    transformer_config: dict
    vae_config: dict
    text_encoder_config: dict
    scheduler_config: dict
    m2dit: dict | None

    def part(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def text_len(self) -> int:
        if self.m2dit and self.m2dit.get("text_len"):
            return int(self.m2dit["text_len"])
        return int(self.transformer_config.get("max_text_seq_length", 226))


def read_pipeline_folder(path: str) -> PipelineFolder:
    """Validates a pipeline folder's layout and configs; errors name the part and file."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise ValueError(f"pipeline folder {path} does not exist")
    index = _read_json(os.path.join(path, MODEL_INDEX), "not a diffusers pipeline folder")
    configs = {}
    for part in PARTS:
        folder = os.path.join(path, part)
        if not os.path.isdir(folder):
            raise ValueError(f"pipeline folder {path}: missing the {part}/ subfolder")
        if part == "tokenizer":
            spiece = os.path.join(folder, "spiece.model")
            if not os.path.isfile(spiece):
                raise ValueError(f"pipeline folder {path}: tokenizer/spiece.model is missing")
            continue
        name = "scheduler_config.json" if part == "scheduler" else "config.json"
        configs[part] = _read_json(os.path.join(folder, name), f"pipeline folder {part}/{name}")
        if part != "scheduler" and not _has_weights(folder):
            raise ValueError(
                f"pipeline folder {path}: {part}/ holds no *.safetensors weights (only "
                "safetensors are read; convert .bin checkpoints first)"
            )
    cls = configs["transformer"].get("_class_name", "CogVideoXTransformer3DModel")
    if cls != "CogVideoXTransformer3DModel":
        raise ValueError(f"{path}/transformer/config.json: _class_name {cls!r} is not CogVideoX")
    vae_cls = configs["vae"].get("_class_name", "AutoencoderKLCogVideoX")
    if vae_cls != "AutoencoderKLCogVideoX":
        raise ValueError(f"{path}/vae/config.json: _class_name {vae_cls!r} is not CogVideoX's")
    schedule_from_scheduler_config(configs["scheduler"], where=f"{path}/scheduler")
    m2dit = None
    if os.path.isfile(os.path.join(path, M2DIT_JSON)):
        m2dit = read_m2dit_json(path)
    return PipelineFolder(
        path=path,
        model_index=index,
        transformer_config=configs["transformer"],
        vae_config=configs["vae"],
        text_encoder_config=configs["text_encoder"],
        scheduler_config=configs["scheduler"],
        m2dit=m2dit,
    )


def schedule_from_scheduler_config(
    config: dict, *, where: str = "scheduler"
) -> tuple[CogVideoXSchedule, str]:
    """(schedule, default sampler "ddim" | "dpm") for a CogVideoX scheduler_config.json."""
    where = f"{where}/scheduler_config.json"
    cls = config.get("_class_name", "CogVideoXDDIMScheduler")
    if cls not in SCHEDULER_CLASSES:
        raise ValueError(f"{where}: _class_name {cls!r} is not one of {SCHEDULER_CLASSES}")
    required = {
        "prediction_type": "v_prediction",
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "trained_betas": None,
        "thresholding": False,
    }
    bad = [
        f"{k}={config[k]!r} (need {v!r})"
        for k, v in required.items()
        if k in config and config[k] != v
    ]
    spacing = config.get("timestep_spacing", "leading")
    if spacing not in TIMESTEP_SPACINGS:
        bad.append(f"timestep_spacing={spacing!r} (need one of {TIMESTEP_SPACINGS})")
    if bad:
        raise ValueError(f"{where}: unsupported settings: {', '.join(bad)}")
    try:
        schedule = CogVideoXSchedule.create(
            snr_shift_scale=float(config.get("snr_shift_scale", 3.0)),
            num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
            beta_start=float(config.get("beta_start", 0.00085)),
            beta_end=float(config.get("beta_end", 0.012)),
            rescale_zero_terminal_snr=bool(config.get("rescale_betas_zero_snr", True)),
            timestep_spacing=spacing,
        )
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err
    return schedule, "dpm" if cls == "CogVideoXDPMScheduler" else "ddim"


def schedule_kwargs(schedule: CogVideoXSchedule) -> dict[str, Any]:
    """``CogVideoXSchedule.create`` keyword arguments that rebuild ``schedule``."""
    return dict(
        snr_shift_scale=schedule.snr_shift_scale,
        num_train_timesteps=schedule.num_train_timesteps,
        beta_start=schedule.beta_start,
        beta_end=schedule.beta_end,
        rescale_zero_terminal_snr=schedule.rescale_zero_terminal_snr,
        timestep_spacing=schedule.timestep_spacing,
    )


def read_m2dit_json(path: str) -> dict:
    file = os.path.join(path, M2DIT_JSON)
    meta = _read_json(file, "m2dit.json")
    if meta.get("format") != M2DIT_FORMAT:
        raise ValueError(f"{file}: format is {meta.get('format')!r}, not {M2DIT_FORMAT!r}")
    if meta.get("version") != M2DIT_VERSION:
        raise ValueError(
            f"{file}: version {meta.get('version')} is not supported (this code reads "
            f"version {M2DIT_VERSION})"
        )
    for key in ("num_scenes", "frames", "height", "width"):
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{file}: {key!r} must be a positive int, got {value!r}")
    positions = meta.get("positions", "diffusers")
    if positions not in POSITION_CONVENTIONS:
        raise ValueError(
            f"{file}: positions must be one of {POSITION_CONVENTIONS}, got {positions!r}"
        )
    return meta


def write_m2dit_json(
    path: str,
    *,
    num_scenes: int,
    frames: int,
    height: int,
    width: int,
    fps: int = DEFAULT_FPS,
    text_len: int = 226,
    positions: str = "diffusers",
    schedule: dict | None = None,
    source: dict | None = None,
) -> str:
    if positions not in POSITION_CONVENTIONS:
        raise ValueError(f"positions must be one of {POSITION_CONVENTIONS}, got {positions!r}")
    meta = {
        "format": M2DIT_FORMAT,
        "version": M2DIT_VERSION,
        "num_scenes": int(num_scenes),
        "frames": int(frames),
        "height": int(height),
        "width": int(width),
        "fps": int(fps),
        "text_len": int(text_len),
        "positions": positions,
        "schedule": dict(schedule or {}),
        "source": dict(source or {}),
    }
    file = os.path.join(path, M2DIT_JSON)
    with open(file, "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    read_m2dit_json(path)  # validates what was written
    return file


def link_or_copy_file(src: str, dst: str) -> str:
    """Hard-links ``src`` at ``dst`` (replacing it), or copies where linking is impossible
    (another filesystem, no permission). Returns "linked" or "copied"."""
    if os.path.lexists(dst):
        os.remove(dst)
    try:
        os.link(os.path.realpath(src), dst)
        return "linked"
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
    shutil.copy2(src, dst)
    return "copied"


def link_or_copy_tree(src: str, dst: str) -> dict[str, int]:
    """Mirrors folder ``src`` at ``dst``: files hard-linked (copied where linking fails, e.g.
    across filesystems), never re-encoded. Returns ``{"linked": n, "copied": m}``."""
    counts = {"linked": 0, "copied": 0}
    for root, _, files in os.walk(src):
        target_dir = os.path.normpath(os.path.join(dst, os.path.relpath(root, src)))
        os.makedirs(target_dir, exist_ok=True)
        for name in files:
            counts[link_or_copy_file(os.path.join(root, name), os.path.join(target_dir, name))] += 1
    return counts
