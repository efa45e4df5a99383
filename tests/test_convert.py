"""Weight import/export: diffusers folders <-> Mask2DiT, our params format, the CLI."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from launch import convert as convert_cli
from m2dit_jax.convert import (
    load_diffusers_transformer,
    load_params,
    save_diffusers_transformer,
    save_params,
)
from m2dit_jax.convert.diffusers import parse_size
from m2dit_jax.convert.safetensors_io import INDEX_NAME, SafetensorsFolder
from m2dit_jax.model import Mask2DiT, create_model, get_model_config
from m2dit_jax.sharding import make_mesh

forward = nnx.jit(Mask2DiT.__call__, static_argnames="num_scenes")


def _flat(model) -> dict:
    return {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _assert_same_params(a, b):
    fa, fb = _flat(a), _flat(b)
    assert set(fa) == set(fb)
    for key in fa:
        np.testing.assert_array_equal(fa[key], fb[key], err_msg=str(key))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A random tiny (non-square sample grid) model and its sharded diffusers export."""
    cfg = get_model_config("tiny", sample_width=12, text_dim=24, text_len=6)
    model = create_model(cfg, seed=11)
    folder = str(tmp_path_factory.mktemp("diffusers") / "transformer")
    files = save_diffusers_transformer(model, folder, max_shard_size="30KB")
    return model, folder, files


def test_save_load_save_is_bit_exact(saved, tmp_path):
    model, folder, files = saved
    assert len(files) > 1 and os.path.exists(os.path.join(folder, INDEX_NAME))
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    assert config["_class_name"] == "CogVideoXTransformer3DModel"
    assert config["sample_frames"] == 5 and config["use_rotary_positional_embeddings"]
    loaded = load_diffusers_transformer(folder)
    _assert_same_params(model, loaded)
    again = str(tmp_path / "again")
    assert save_diffusers_transformer(loaded, again) == ["diffusion_pytorch_model.safetensors"]
    first, second = SafetensorsFolder(folder), SafetensorsFolder(again)
    assert (
        first.keys() == second.keys() and len(first.keys()) == 8 + 2 * 24 + 8
    )  # 5B: 16 + 42 * 24 = 1024
    for key in first.keys():
        np.testing.assert_array_equal(first.get(key), second.get(key), err_msg=key)


def test_scanned_load_and_bfloat16_export(saved, tmp_path):
    model, folder, _ = saved
    scanned = load_diffusers_transformer(folder, scan_layers=True, remat="full")
    q = scanned.blocks.attn.to_q.kernel.get_value()
    np.testing.assert_array_equal(
        np.asarray(q[1]), np.asarray(model.blocks[1].attn.to_q.kernel.get_value())
    )
    bf16 = str(tmp_path / "bf16")
    save_diffusers_transformer(scanned, bf16, dtype="bfloat16")
    assert SafetensorsFolder(bf16).get("proj_out.weight").dtype.name == "bfloat16"
    back = load_diffusers_transformer(bf16)
    for key, value in _flat(back).items():
        assert value.dtype == np.float32
        want = jnp.asarray(_flat(model)[key]).astype(jnp.bfloat16).astype(jnp.float32)
        np.testing.assert_array_equal(value, np.asarray(want), err_msg=str(key))


def test_load_onto_mesh_and_into_an_existing_model(saved):
    model, folder, _ = saved
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    on_mesh = load_diffusers_transformer(folder, mesh=mesh, scan_layers=True)
    kernel = on_mesh.blocks.ff.proj_in.kernel.get_value()
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, ("fsdp", "context"), "tensor")
    assert kernel.addressable_shards[0].data.shape == (2, 8, 64)
    # the trainer's path: fill a mesh-born model in place, keeping its shardings
    target = create_model(model.config, seed=99, mesh=mesh)
    before = target.blocks[0].attn.to_q.kernel.get_value().sharding
    assert load_diffusers_transformer(folder, model=target) is target
    assert target.blocks[0].attn.to_q.kernel.get_value().sharding == before
    _assert_same_params(model, target)
    wrong = create_model(get_model_config("tiny", num_layers=3, text_dim=24))
    with pytest.raises(ValueError, match="num_layers: checkpoint 2 vs model 3"):
        load_diffusers_transformer(folder, model=wrong)


def test_bad_checkpoints_are_named(saved, tmp_path):
    model, folder, _ = saved
    bad = str(tmp_path / "bad")
    save_diffusers_transformer(model, bad)
    tensors = SafetensorsFolder(bad)
    kept = [(k, np.array(tensors.get(k))) for k in tensors.keys() if "norm_k" not in k]
    kept.append(("extra.weight", np.zeros(3, np.float32)))
    from m2dit_jax.convert.safetensors_io import write_folder

    write_folder(bad, kept)
    with pytest.raises(ValueError, match=r"missing tensors \[transformer_blocks.0.attn1.norm_k"):
        load_diffusers_transformer(bad)
    with pytest.raises(ValueError, match=r"unexpected tensors \[extra.weight\]"):
        load_diffusers_transformer(bad)
    with open(os.path.join(bad, "config.json")) as f:
        config = json.load(f)
    config["patch_size_t"] = 2
    with open(os.path.join(bad, "config.json"), "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match="patch_size_t=2 is not supported"):
        load_diffusers_transformer(bad)
    with pytest.raises(ValueError, match="neither a diffusers transformer folder"):
        load_diffusers_transformer(str(tmp_path))
    assert parse_size("10GB") == 10**9 * 10 and parse_size("2MiB") == 2 * 2**20
    with pytest.raises(ValueError, match="max_shard_size"):
        parse_size("ten gigs")


def test_params_format_and_cli(saved, tmp_path):
    model, folder, _ = saved
    params = str(tmp_path / "params")
    summary = convert_cli.main(["to-jax", "--diffusers", folder, "--out", params])
    assert summary["num_params"] == sum(v.size for v in _flat(model).values())
    restored = load_params(params)
    _assert_same_params(model, restored)
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    sharded = load_params(params, mesh=mesh)
    q = sharded.blocks[0].attn.to_q.kernel.get_value()
    # 2 heads cannot split 4 ways: that axis falls back to replication
    assert q.sharding.spec == jax.sharding.PartitionSpec(("fsdp", "context"), None, None)
    _assert_same_params(model, sharded)
    out = str(tmp_path / "exported")
    summary = convert_cli.main(["to-diffusers", "--params", params, "--out", out, "--bf16"])
    assert summary["files"] == ["diffusion_pytorch_model.safetensors"]
    assert SafetensorsFolder(out).get("norm_final.weight").dtype.name == "bfloat16"
    with pytest.raises(ValueError, match="already exists"):
        save_params(model, params)
    with pytest.raises(SystemExit):
        convert_cli.main(["to-diffusers", "--params", str(tmp_path), "--out", out])


@pytest.mark.parity
def test_exported_folder_runs_in_diffusers(saved):
    torch = pytest.importorskip("torch", reason="the parity extra (torch + diffusers) is needed")
    diffusers = pytest.importorskip("diffusers", reason="the parity extra is needed")
    from test_model_reference import diffusers_rope, run_diffusers

    model, folder, _ = saved
    reference = diffusers.CogVideoXTransformer3DModel.from_pretrained(folder).eval()
    torch.set_grad_enabled(False)
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((2, 2, 8, 12, 4)).astype(np.float32)
    text = rng.standard_normal((2, 6, 24)).astype(np.float32)
    t = np.array([3, 871])
    want = run_diffusers(reference, latents, text, t, rope=diffusers_rope(reference, 2, 8, 12))
    got = forward(model, jnp.asarray(latents), jnp.asarray(text), jnp.asarray(t), num_scenes=1)
    assert np.abs(np.asarray(got) - want).max() <= 1e-4
