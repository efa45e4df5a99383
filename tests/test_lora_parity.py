"""Our LoRA equals diffusers + peft: a random LoRA on a tiny CogVideoX transformer, exported in
diffusers' layout and loaded with ``load_lora_adapter`` (peft scale via ``set_adapters``);
merged exports equal the unmerged (in-step) LoRA forward."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the parity extra (torch + diffusers) is needed")
pytest.importorskip("diffusers", reason="the parity extra (torch + diffusers) is needed")
pytest.importorskip("peft", reason="the parity extra (peft) is needed")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from test_model_reference import (  # noqa: E402
    TINY,
    diffusers_rope,
    random_diffusers_transformer,
    run_diffusers,  # noqa: E402
)

from m2dit_jax.convert import load_diffusers_transformer  # noqa: E402
from m2dit_jax.convert import lora as lora_io  # noqa: E402
from m2dit_jax.convert.pipeline import save_transformer_from_flat  # noqa: E402
from m2dit_jax.inference.bundle import flat_params  # noqa: E402
from m2dit_jax.model import Mask2DiT  # noqa: E402
from m2dit_jax.train import lora as lora_lib  # noqa: E402
from m2dit_jax.train.state import split_model  # noqa: E402

pytestmark = pytest.mark.parity
TOL = 1e-4
SCALE = 0.55
forward = nnx.jit(Mask2DiT.__call__, static_argnames="num_scenes")


def _random_adapters(spec, params, seed=3):
    rng = np.random.default_rng(seed)
    abstract = lora_lib.abstract_adapters(spec, params)
    return {
        k: {n: jnp.asarray(0.2 * rng.standard_normal(v.shape), jnp.float32) for n, v in ad.items()}
        for k, ad in _leaves_by_module(abstract)
    }, abstract


def _leaves_by_module(tree, prefix=()):
    if "lora_a" in tree:
        yield prefix, tree
        return
    for k, v in tree.items():
        yield from _leaves_by_module(v, prefix + (k,))


def _nest(flat_by_module):
    out = {}
    for path, ad in flat_by_module.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = ad
    return out


@pytest.mark.parametrize("scan", [True, False])
def test_exported_lora_in_diffusers_equals_our_forward(tmp_path, scan):
    torch_model = random_diffusers_transformer("rope")
    folder = tmp_path / "base"
    torch_model.save_pretrained(folder)
    model = load_diffusers_transformer(str(folder), scan_layers=scan)
    parts, params = split_model(model)
    targets, problems = lora_lib.select_targets(
        lora_lib.DEFAULT_TARGETS + "," + lora_lib.FF_TARGETS, TINY["num_layers"], scan
    )
    assert not problems and len(targets) == (6 if scan else 12)
    spec = lora_lib.LoraSpec(rank=4, alpha=8.0, targets=tuple(targets))
    by_module, _ = _random_adapters(spec, params)
    adapters = _nest(by_module)

    rng = np.random.default_rng(0)
    latents = rng.standard_normal((2, 2, 8, 8, 4)).astype(np.float32)
    text = rng.standard_normal((2, TINY["max_text_seq_length"], TINY["text_embed_dim"]))
    text = text.astype(np.float32)
    t = np.array([10, 700])
    ours = parts.bind(lora_lib.merge(params, adapters, spec, scale=SCALE))
    got = np.asarray(forward(ours, latents, text, t, num_scenes=1))
    base_out = np.asarray(forward(model, latents, text, t, num_scenes=1))
    assert np.abs(got - base_out).max() > 1e-2  # the LoRA changes the output

    # 1) our file, loaded by diffusers/peft, at peft scale SCALE
    path = lora_io.export_lora(
        flat_params(adapters), model.config, str(tmp_path / "lora"), rank=4, alpha=8.0
    )
    _, meta = lora_io.read_lora_file(path)
    assert meta["r"] == 4 and meta["lora_alpha"] == 4 and len(meta["target_modules"]) == 12
    torch_model.load_lora_adapter(path, prefix="transformer", adapter_name="ours")
    torch_model.set_adapters(["ours"], weights=[SCALE])
    rope = diffusers_rope(torch_model, 2, 8, 8)
    want = run_diffusers(torch_model, latents, text, t, rope=rope)
    print("diffusers+peft max abs error", np.abs(got - want).max())
    assert np.abs(got - want).max() <= TOL

    # 2) merged export (what --merge-lora writes) equals the unmerged forward
    merged = lora_io.merge_lora_flat(flat_params(params), model.config, path, SCALE)
    save_transformer_from_flat(merged, model.config, str(tmp_path / "merged"))
    plain = type(torch_model).from_pretrained(tmp_path / "merged").eval()
    merged_out = run_diffusers(plain, latents, text, t, rope=rope)
    print("merged vs unmerged max abs error", np.abs(merged_out - got).max())
    assert np.abs(merged_out - got).max() <= TOL

    # 3) sample-time import (--lora FILE --lora-scale): merged into a freshly loaded model
    fresh = load_diffusers_transformer(str(folder), scan_layers=scan)
    assert lora_io.merge_lora_into_model(fresh, path, SCALE) == 12
    imported = np.asarray(forward(fresh, latents, text, t, num_scenes=1))
    assert np.abs(imported - got).max() <= TOL


def test_third_party_peft_lora_imports(tmp_path):
    """A LoRA made by peft itself (random A and B, alpha != r, saved by diffusers'
    save_lora_adapter with its metadata) merged by us equals diffusers running it unmerged."""
    from peft import LoraConfig

    torch_model = random_diffusers_transformer("rope", seed=5)
    folder = tmp_path / "base"
    torch_model.save_pretrained(folder)
    config = LoraConfig(
        r=3, lora_alpha=7, target_modules=["to_q", "to_v", "ff.net.2", "proj_out"],
        init_lora_weights=False,
    )  # fmt: skip
    torch.manual_seed(0)
    torch_model.add_adapter(config, adapter_name="theirs")
    torch_model.save_lora_adapter(str(tmp_path / "theirs"), adapter_name="theirs")
    path = str(tmp_path / "theirs" / "pytorch_lora_weights.safetensors")
    torch_model.set_adapters(["theirs"], weights=[0.8])
    rng = np.random.default_rng(1)
    latents = rng.standard_normal((1, 2, 8, 8, 4)).astype(np.float32)
    text = rng.standard_normal((1, TINY["max_text_seq_length"], TINY["text_embed_dim"]))
    text = text.astype(np.float32)
    t = np.array([300])
    want = run_diffusers(torch_model, latents, text, t, rope=diffusers_rope(torch_model, 2, 8, 8))
    model = load_diffusers_transformer(str(folder), scan_layers=True)
    before = np.asarray(forward(model, latents, text, t, num_scenes=1))
    assert lora_io.merge_lora_into_model(model, path, 0.8) == 3 * TINY["num_layers"] + 1
    got = np.asarray(forward(model, latents, text, t, num_scenes=1))
    assert np.abs(before - want).max() > 1e-2  # the adapter is active in diffusers
    print("third-party max abs error", np.abs(got - want).max())
    assert np.abs(got - want).max() <= TOL
