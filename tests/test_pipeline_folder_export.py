"""m2dit-export of a latent-space run -> a complete pipeline folder -> diffusers loads its
transformer, m2dit-sample samples it; flat-params export equals the model exporter."""

import json
import os

import numpy as np
import pytest
from test_pipeline_folder import FRAMES, SIZE, T5, TEXT_LEN, build_jax_folder, model_config

from launch import export as export_cli
from launch import sample as sample_cli
from m2dit_jax import export as export_lib
from m2dit_jax import media
from m2dit_jax.inference import pipeline_folder as pf

SCENES = 2


def _latent_shards(folder, count=6):
    from m2dit_jax.data import LatentRecord, write_latent_shard

    rng = np.random.default_rng(0)
    records = [
        LatentRecord(
            id=f"s{i}",
            captions=("a red ball rolls", "Actor1 opens the door"),
            latents=rng.standard_normal((SCENES, 3, SIZE // 8, SIZE // 8, 4)).astype(np.float32),
            text_embeds=rng.standard_normal((SCENES, TEXT_LEN, T5["d_model"])).astype(np.float32),
            text_mask=np.ones((SCENES, TEXT_LEN), bool),
            meta={"frames": FRAMES, "height": SIZE, "width": SIZE, "vae_scaling_factor": 0.7},
        )
        for i in range(count)
    ]
    os.makedirs(folder, exist_ok=True)
    write_latent_shard(os.path.join(folder, "latents-00000-of-00001.array_record"), records)
    return folder


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory):
    from test_train_common import tiny_config

    from m2dit_jax.data import default_data_config
    from m2dit_jax.train import train_and_evaluate

    root = tmp_path_factory.mktemp("latent_run")
    base = build_jax_folder(str(root / "base"))
    shards = _latent_shards(str(root / "latents"))
    config = tiny_config(num_steps=2, batch_size=2, checkpoint_every=2)
    config.data = default_data_config()
    config.data.update(dict(source="latents", path=shards, num_scenes=SCENES, num_samples=6))
    config.model = model_config()
    workdir = str(root / "run")
    assert train_and_evaluate(config, workdir)["step"] == 2
    return base, workdir


def test_export_sample_and_diffusers_load(latent_run, tmp_path, capsys):
    base, workdir = latent_run
    out = str(tmp_path / "exported")
    # The run's config names no base pipeline: the exporter asks for --base.
    with pytest.raises(SystemExit) as info:
        export_cli.main(["--workdir", workdir, "--out", out])
    assert info.value.code == 2 and "pass --base PIPELINE_DIR" in capsys.readouterr().err

    summary = export_cli.main(["--workdir", workdir, "--out", out, "--base", base, "--bf16"])
    assert summary["step"] == 2 and summary["scheduler_rewritten"] == []  # trained at 3.0 too
    folder = pf.read_pipeline_folder(out)  # complete and valid
    meta = folder.m2dit
    assert (meta["num_scenes"], meta["frames"], meta["height"], meta["width"]) == (
        SCENES,
        FRAMES,
        SIZE,
        SIZE,
    )
    assert meta["source"]["step"] == 2 and meta["positions"] == "diffusers"
    assert meta["schedule"]["snr_shift_scale"] == 3.0
    # The base's encoders are hard links, not re-saved copies.
    for part, name in (
        ("vae", "diffusion_pytorch_model.safetensors"),
        ("tokenizer", "spiece.model"),
    ):
        a, b = os.path.join(base, part, name), os.path.join(out, part, name)
        assert os.stat(a).st_ino == os.stat(b).st_ino
    assert summary["linked_files"] >= 5 and summary["copied_files"] == 0
    # The transformer holds the EMA weights (bf16).
    from m2dit_jax.convert import load_diffusers_transformer

    loaded = load_diffusers_transformer(out)
    ema = export_lib.restore_weights(export_lib.find_checkpoint(workdir)[1], "ema")
    from m2dit_jax.inference.bundle import flat_params

    got = flat_params(loaded)
    assert set(got) == set(ema)
    for key, value in ema.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-2, atol=1e-2)

    script = tmp_path / "s.yaml"
    script.write_text(
        "sampler: {steps: 2, guidance_scale: 6.0}\nnegative: blurry\n"
        "scenes: [a red ball rolls, Actor1 opens the door]\n"
    )
    video = str(tmp_path / "v.mp4")
    sample_cli.main(["--model", out, "--script", str(script), "--out", video, "--dtype", "float32"])
    assert media.read_video(video).shape == (SCENES * FRAMES, SIZE, SIZE, 3)

    torch = pytest.importorskip("torch", reason="diffusers loading needs the `parity` extra")
    diffusers = pytest.importorskip(
        "diffusers", reason="diffusers loading needs the `parity` extra"
    )
    ref = diffusers.CogVideoXTransformer3DModel.from_pretrained(os.path.join(out, "transformer"))
    assert ref.config.max_text_seq_length == TEXT_LEN and ref.config.num_layers == 2
    weight = ref.state_dict()["transformer_blocks.0.attn1.to_q.weight"]  # cast to f32 on load
    from m2dit_jax.convert.safetensors_io import SafetensorsFolder

    stored = SafetensorsFolder(os.path.join(out, "transformer"))
    assert str(stored.get("transformer_blocks.0.attn1.to_q.weight").dtype) == "bfloat16"
    assert weight.dtype == torch.float32
    np.testing.assert_allclose(
        weight.float().numpy().T.reshape(got["blocks/0/attn/to_q/kernel"].shape),
        got["blocks/0/attn/to_q/kernel"],
    )


@pytest.mark.parametrize("scan", [False, True])
def test_flat_export_equals_model_export(tmp_path, scan):
    from m2dit_jax.convert import save_diffusers_transformer
    from m2dit_jax.convert.pipeline import save_transformer_from_flat
    from m2dit_jax.convert.safetensors_io import SafetensorsFolder
    from m2dit_jax.inference.bundle import flat_params
    from m2dit_jax.model import create_model

    model = create_model(model_config(scan_layers=scan), seed=1)
    save_diffusers_transformer(model, str(tmp_path / "a"))
    save_transformer_from_flat(flat_params(model), model.config, str(tmp_path / "b"))
    a, b = SafetensorsFolder(str(tmp_path / "a")), SafetensorsFolder(str(tmp_path / "b"))
    assert a.keys() == b.keys()
    for key in a.keys():
        np.testing.assert_array_equal(np.asarray(a.get(key)), np.asarray(b.get(key)))
    assert json.load(open(tmp_path / "a" / "config.json")) == json.load(
        open(tmp_path / "b" / "config.json")
    )
    with pytest.raises(ValueError, match="missing"):
        params = flat_params(model)
        params.pop(next(iter(params)))
        save_transformer_from_flat(params, model.config, str(tmp_path / "c"))


def test_base_pipeline_from_init_from(tmp_path):
    base = str(tmp_path / "base")
    os.makedirs(os.path.join(base, "transformer"))
    open(os.path.join(base, pf.MODEL_INDEX), "w").write("{}")
    assert export_lib.resolve_base({"init_from": base}, None) == base
    assert export_lib.resolve_base({"init_from": base + "/transformer"}, None) == base
    stage1 = tmp_path / "stage1"  # stage 2 starts from a stage-1 workdir started from base
    stage1.mkdir()
    (stage1 / "config.json").write_text(json.dumps({"model": {}, "data": {}, "init_from": base}))
    assert export_lib.resolve_base({"init_from": f"{stage1}@250"}, None) == base
    with pytest.raises(ValueError, match="not a diffusers pipeline folder"):
        export_lib.resolve_base({}, str(tmp_path))
    with pytest.raises(ValueError, match="pass --base"):
        export_lib.resolve_base({"init_from": ""}, None)
