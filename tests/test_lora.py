"""LoRA fine-tuning (``config.lora``): frozen base, adapters only in the optimizer and EMA,
exact resume, sharded + accumulated + context-parallel steps, config checks, export and
sample-time import."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_train_common import tiny_config

from m2dit_jax.sharding import make_mesh
from m2dit_jax.train import ConfigError, check_config, train_and_evaluate
from m2dit_jax.train import lora as lora_lib
from m2dit_jax.train.program import build_train_program


def lora_config(**train):
    config = tiny_config(heads=4, **train)
    config.model.update(dict(num_layers=2, scan_layers=True, remat="full"))
    config.train.num_steps = train.get("num_steps", 4)
    config.lora.update(dict(rank=4, alpha=8.0))
    config.eval.batches = 1
    return config


def _jsonl(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if "grad_norm" in line]


def _restore_state(workdir, step):
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    return ocp.PyTreeCheckpointer().restore(path)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("lora_straight"))
    return workdir, train_and_evaluate(lora_config(), workdir)


def test_lora_state_freezes_the_base_and_holds_adapter_moments_only(straight):
    workdir, result = straight
    assert result["step"] == 4 and np.isfinite(result["losses"]).all()
    assert np.isfinite(result["eval"]["loss"]) and np.isfinite(result["eval"]["loss_ema"])
    state = _restore_state(workdir, 4)
    from m2dit_jax.model import create_model
    from m2dit_jax.train.state import split_model

    config = lora_config()
    _, init = split_model(create_model(config.model, seed=int(config.seed)))
    base_leaves = jax.tree_util.tree_leaves_with_path(state["base"])
    init_leaves = jax.tree_util.tree_leaves(init)
    assert len(base_leaves) == len(init_leaves)
    for (_, got), want in zip(base_leaves, init_leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))  # bit for bit frozen
    adapters = state["params"]["blocks"]["attn"]
    assert sorted(adapters) == ["to_k", "to_out", "to_q", "to_v"]
    assert adapters["to_q"]["lora_a"].shape == (2, 64, 4)  # (L, D, r)
    assert adapters["to_out"]["lora_b"].shape == (2, 4, 64)  # (L, r, D)
    assert np.abs(adapters["to_q"]["lora_b"]).max() > 0  # trained from B = 0
    # moments and EMA mirror the adapters: nothing base-shaped beyond state["base"]
    n_adapter = sum(x.size for x in jax.tree.leaves(state["params"]))
    n_ema = sum(x.size for x in jax.tree.leaves(state["ema"]))
    n_opt = sum(np.size(x) for x in jax.tree.leaves(state["opt_state"]))
    assert n_ema == n_adapter and n_opt <= 2 * n_adapter + 16


def test_lora_resume_is_bit_exact(straight, tmp_path):
    ref_dir, ref = straight
    first = train_and_evaluate(lora_config(stop_at_step=2), str(tmp_path))
    second = train_and_evaluate(lora_config(), str(tmp_path))
    assert second["start_step"] == 2 and second["step"] == 4
    assert first["losses"] + second["losses"] == ref["losses"]  # bit for bit
    assert [m["grad_norm"] for m in _jsonl(tmp_path)] == [m["grad_norm"] for m in _jsonl(ref_dir)]
    a, b = _restore_state(ref_dir, 4), _restore_state(str(tmp_path), 4)
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _one_step(config, mesh_shape, devices, batch):
    from m2dit_jax.model import create_model
    from m2dit_jax.train.state import split_model

    mesh = make_mesh(mesh_shape, devices)
    program = build_train_program(config, mesh)
    with jax.set_mesh(mesh):
        _, params = split_model(create_model(config.model, seed=0, mesh=mesh))
        state = program.init_state(params, 0)
        shapes = program.abstract_batch()
        placed = {k: jax.device_put(v, shapes[k].sharding) for k, v in batch.items()}
        step = program.step_for({k: v.sharding for k, v in placed.items()}, donate=False)
        new, metrics = step(state, placed)
    return program, state, new, metrics


def one_and_eight_device_steps(config):
    """One step of ``config`` on one device and on fsdp 2 x context 2 x tensor 2, same batch
    (random values; mask 2 all generated)."""
    rng = np.random.default_rng(0)
    shapes = build_train_program(config, make_mesh({"fsdp": 1}, jax.devices()[:1]))
    batch = {
        k: (
            rng.standard_normal(v.shape) if v.dtype != jnp.bool_ else np.ones(v.shape, bool)
        ).astype(v.dtype)
        for k, v in shapes.abstract_batch().items()
    }
    one = _one_step(
        config, {"data": 1, "fsdp": 1, "context": 1, "tensor": 1}, jax.devices()[:1], batch
    )
    eight = _one_step(
        config, {"data": 1, "fsdp": 2, "context": 2, "tensor": 2}, jax.devices()[:8], batch
    )
    return one, eight


def test_lora_sharded_accumulated_context_parallel_step_matches_one_device():
    config = lora_config()
    config.optim.grad_accum_steps = 2
    one, eight = one_and_eight_device_steps(config)
    program8 = eight[0]
    kernel = program8.model_params["blocks"]["attn"]["to_q"]["kernel"].sharding.spec
    a_sh = program8.state_shardings["params"]["blocks"]["attn"]["to_q"]["lora_a"].spec
    b_sh = program8.state_shardings["params"]["blocks"]["attn"]["to_q"]["lora_b"].spec
    kernel = tuple(kernel) + (None,) * (4 - len(kernel))
    assert tuple(a_sh) == kernel[:2] + (None,) and tuple(b_sh) == (kernel[0], None) + kernel[2:]
    assert any(ax is not None for ax in kernel)  # the adapters really are sharded
    assert float(one[3]["loss"]) > 0 and float(one[3]["grad_norm"]) > 0  # cond: all generated
    np.testing.assert_allclose(float(one[3]["loss"]), float(eight[3]["loss"]), rtol=1e-5)
    for x, y in zip(
        jax.tree.leaves(one[2]["params"]), jax.tree.leaves(eight[2]["params"]), strict=True
    ):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)
    for x, y in zip(
        jax.tree.leaves(eight[1]["base"]), jax.tree.leaves(eight[2]["base"]), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # the base passes through


def test_lora_off_is_the_full_fine_tuning_program():
    config = tiny_config()
    assert config.lora.rank == 0
    program = build_train_program(config, make_mesh({"fsdp": 1}, jax.devices()[:1]))
    assert program.lora is None and "base" not in program.abstract_state
    assert program.weights_target() is program


def _config_error(config) -> str:
    with pytest.raises(ConfigError) as info:
        check_config(config, num_devices=1)
    return str(info.value)


def test_lora_config_checks_name_the_fields():
    config = lora_config()
    assert check_config(config, num_devices=1)["fsdp"] == 1
    config.lora.rank = -1
    assert "lora.rank=-1" in _config_error(config)
    config = lora_config()
    config.lora.targets = "attn/to_(q"
    assert "bad regular expression" in _config_error(config)
    config = lora_config()
    config.lora.targets = r"blocks/0/attn/to_q$"
    assert "scanned" in _config_error(config)
    config.model.scan_layers = False  # unscanned: per-layer targets are fine
    assert check_config(config, num_devices=1)
    config = lora_config()
    config.lora.targets = "nothing"
    assert "matches no block module" in _config_error(config)
    config = lora_config()
    config.lora.init = "ones"
    assert "lora.init='ones'" in _config_error(config)
    config = lora_config()
    del config["lora"]  # configs from before LoRA: off
    assert check_config(config, num_devices=1)


def test_lora_targets_ff_and_unscanned_layers():
    targets, problems = lora_lib.select_targets(r"blocks/1/ff/proj_(in|out)$", 3, False)
    assert not problems and [(t.module, t.layer) for t in targets] == [
        ("ff/proj_in", 1),
        ("ff/proj_out", 1),
    ]


def test_export_merge_lora_lora_only_and_sample_time_import(straight, tmp_path):
    from launch import export as export_cli
    from m2dit_jax.convert import lora as lora_io
    from m2dit_jax.inference.bundle import flat_params, load_bundle
    from m2dit_jax.inference.pipeline import SamplingPipeline

    workdir, _ = straight
    with pytest.raises(SystemExit) as info:
        export_cli.main(["--workdir", workdir, "--out", str(tmp_path / "plain")])
    assert info.value.code == 2
    export_cli.main(
        ["--workdir", workdir, "--out", str(tmp_path / "m"), "--merge-lora", "--scale", "0.5"]
    )
    export_cli.main(
        ["--workdir", workdir, "--out", str(tmp_path / "zero"), "--merge-lora", "--scale", "0"]
    )
    summary = export_cli.main(
        ["--workdir", workdir, "--out", str(tmp_path / "lora"), "--lora-only"]
    )
    assert summary["lora"].endswith("pytorch_lora_weights.safetensors")
    tensors, meta = lora_io.read_lora_file(summary["lora"])
    assert len(tensors) == 2 * 4 * 2 and meta["r"] == 4
    assert "transformer.transformer_blocks.1.attn1.to_out.0.lora_B.weight" in tensors

    state = _restore_state(workdir, 4)
    spec = lora_lib.lora_spec(lora_config())
    want = flat_params(jax.device_get(lora_lib.merge(state["base"], state["ema"], spec, 0.5)))
    got = flat_params(load_bundle(str(tmp_path / "m")).model)
    base = flat_params(load_bundle(str(tmp_path / "zero")).model)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, atol=1e-6)
    np.testing.assert_array_equal(
        base["blocks/attn/to_q/kernel"], state["base"]["blocks"]["attn"]["to_q"]["kernel"]
    )
    assert np.abs(got["blocks/attn/to_q/kernel"] - base["blocks/attn/to_q/kernel"]).max() > 0

    pipe = SamplingPipeline.from_pretrained(
        str(tmp_path / "zero"), lora=summary["lora"], lora_scale=0.5
    )
    imported = flat_params(pipe.model)
    for key, value in want.items():
        np.testing.assert_allclose(imported[key], value, atol=1e-6)


def test_lora_init_from_diffusers_weights_becomes_the_frozen_base(tmp_path):
    from m2dit_jax.convert import save_diffusers_transformer
    from m2dit_jax.model import create_model
    from m2dit_jax.train.state import split_model

    config = lora_config(num_steps=1)
    config.eval.batches = 0
    source = create_model(config.model, seed=7)
    save_diffusers_transformer(source, str(tmp_path / "transformer"))
    config.init_from = str(tmp_path / "transformer")
    train_and_evaluate(config, str(tmp_path / "run"))
    state = _restore_state(str(tmp_path / "run"), 1)
    _, want = split_model(source)
    for x, y in zip(jax.tree.leaves(state["base"]), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_lora_bf16_compute_and_base_train_and_keep_the_base(tmp_path):
    config = lora_config(num_steps=2)
    config.eval.batches = 0
    config.model.dtype = "bfloat16"
    config.lora.base_dtype = "bfloat16"
    result = train_and_evaluate(config, str(tmp_path))
    assert np.isfinite(result["losses"]).all()
    state = _restore_state(str(tmp_path), 2)
    kernel = state["base"]["blocks"]["attn"]["to_q"]["kernel"]
    assert kernel.dtype == jnp.bfloat16
    assert state["params"]["blocks"]["attn"]["to_q"]["lora_a"].dtype == np.float32


def test_sample_cli_applies_a_lora_file(straight, tmp_path):
    from launch import export as export_cli
    from launch import sample as sample_cli

    workdir, _ = straight
    export_cli.main(
        ["--workdir", workdir, "--out", str(tmp_path / "b"), "--merge-lora", "--scale", "0"]
    )
    lora = export_cli.main(
        ["--workdir", workdir, "--out", str(tmp_path / "l.safetensors"), "--lora-only"]
    )
    script = tmp_path / "s.yaml"
    script.write_text("scenes:\n  - a red circle\n  - a blue square\n")
    args = [
        "--model",
        str(tmp_path / "b"),
        "--script",
        str(script),
        "--steps",
        "2",
        "--no-progress",
    ]
    plain = sample_cli.main(args + ["--out", str(tmp_path / "plain.gif")])
    tuned = sample_cli.main(
        args + ["--out", str(tmp_path / "lora.gif"), "--lora", lora["lora"], "--lora-scale", "1.0"]
    )
    assert os.path.isfile(tuned[0]) and os.path.isfile(plain[0])
    with pytest.raises(SystemExit):
        sample_cli.main(args + ["--out", str(tmp_path / "x.gif"), "--lora", str(tmp_path / "none")])
