"""Memory that scales with the mesh: what the compiled programs hold per device.

* Activations between blocks are sequence-sharded over ``context`` (and batch-sharded over
  data x fsdp) in the compiled program, not only annotated: the sharding XLA chose for each
  block's output and the per-device shape of the scanned layers' carry.
* The train state (params, AdamW moments, EMA) is sharded over fsdp x context by default
  (``embed`` rule), over data too with the "zero3" preset.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from test_train_common import tiny_config

from m2dit_jax.model import block as block_module
from m2dit_jax.model import create_model, get_model_config
from m2dit_jax.sharding import (
    LOGICAL_RULES,
    RULE_PRESETS,
    axis_rules,
    logical_to_mesh_axes,
    make_mesh,
    parse_logical_rules,
)
from m2dit_jax.train.program import build_train_program

S, F, H, W = 3, 2, 8, 12


def test_default_rules_shard_the_state_over_fsdp_and_context():
    assert dict(LOGICAL_RULES)["embed"] == ("fsdp", "context")
    assert logical_to_mesh_axes(("embed", "mlp")) == P(("fsdp", "context"), "tensor")
    # activations: batch over data x fsdp, tokens over context, width whole
    assert logical_to_mesh_axes(("batch", "seq", "act_embed")) == P(
        ("data", "fsdp"), "context", None
    )


def test_rule_presets():
    assert parse_logical_rules("zero3") == (("embed", ("data", "fsdp", "context")),)
    assert parse_logical_rules("fsdp") == (("embed", "fsdp"),)
    # a preset then an explicit entry for another (or the same) name
    assert parse_logical_rules("zero3, mlp=") == (
        ("embed", ("data", "fsdp", "context")),
        ("mlp", None),
    )
    assert parse_logical_rules("zero3; embed=fsdp") == (("embed", "fsdp"),)
    assert set(RULE_PRESETS) >= {"zero3", "fsdp", "fsdp_context"}
    with pytest.raises(ValueError, match="preset"):
        parse_logical_rules("zero4")
    with axis_rules("zero3"):
        assert logical_to_mesh_axes(("embed",)) == P(("data", "fsdp", "context"))


def test_activations_between_blocks_are_sequence_sharded_over_context(monkeypatch):
    mesh = make_mesh({"data": 1, "fsdp": 2, "context": 2, "tensor": 2})
    cfg = get_model_config("tiny", num_heads=4, scan_layers=True, attention_backend="split")
    model = create_model(cfg, seed=1)
    batch = 4
    latents = jnp.zeros((batch, S * F, H, W, cfg.in_channels))
    text = jnp.zeros((batch, S * cfg.text_len, cfg.text_dim))
    t = jnp.zeros((batch,), jnp.int32)
    seq = S * cfg.text_len + S * F * (H // 2) * (W // 2)
    width = cfg.num_heads * cfg.head_dim

    seen = []
    original = block_module.Mask2DiTBlock.__call__

    def spying_call(self, x, temb, rope, layout):
        out = original(self, x, temb, rope, layout)
        jax.debug.inspect_array_sharding(out, callback=lambda s: seen.append(s))
        return out

    monkeypatch.setattr(block_module.Mask2DiTBlock, "__call__", spying_call)
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, a, b, c: nnx.merge(graphdef, s)(a, b, c, num_scenes=S))
    with jax.set_mesh(mesh):
        compiled = fwd.lower(state, latents, text, t).compile()
    assert seen, "inspect_array_sharding never reported"
    want = NamedSharding(mesh, P(("data", "fsdp"), "context", None))
    for sharding in seen:  # what XLA's sharding propagation settled on
        assert sharding.is_equivalent_to(want, 3), sharding
        assert sharding.shard_shape((batch, seq, width)) == (batch // 2, seq // 2, width)
    # the scan's carry (the activations kept between layers) has the per-device shape
    hlo = compiled.as_text()
    assert f"f32[{batch // 2},{seq // 2},{width}]" in hlo
    assert not any(
        f"f32[{batch // 2},{seq},{width}]" in line for line in hlo.splitlines() if "while(" in line
    ), "the scanned carry holds the whole sequence"


def _state_fraction(config, mesh) -> dict[str, float]:
    """Per-device bytes / global bytes of the train state's params, moments and EMA."""
    with axis_rules(config.mesh.get("logical_rules", "")):
        program = build_train_program(config, mesh)
    out = {}
    for part in ("params", "opt_state", "ema"):
        leaves = [x for x in jax.tree.leaves(program.abstract_state[part]) if x.ndim > 0]
        total = sum(math.prod(x.shape) for x in leaves)
        local = sum(math.prod(x.sharding.shard_shape(x.shape)) for x in leaves)
        out[part] = local / total
    return out


@pytest.mark.parametrize(
    "mesh_shape, rules, ways",
    [
        (dict(data=1, fsdp=2, context=1, tensor=1), "", 2),
        (dict(data=1, fsdp=2, context=4, tensor=1), "", 8),
        (dict(data=1, fsdp=2, context=4, tensor=1), "fsdp", 2),  # the old default
        (dict(data=2, fsdp=2, context=2, tensor=1), "", 4),
        (dict(data=2, fsdp=2, context=2, tensor=1), "zero3", 8),
    ],
)
def test_train_state_takes_one_nth_per_device(mesh_shape, rules, ways):
    config = tiny_config(heads=8)
    config.mesh.update(dict(mesh_shape, num_devices=0))
    config.mesh.logical_rules = rules
    config.train.batch_size = 8
    mesh = make_mesh(mesh_shape, jax.devices()[: math.prod(mesh_shape.values())])
    fractions = _state_fraction(config, mesh)
    for part, fraction in fractions.items():
        # nearly every parameter has an embed axis; the few that do not are small
        assert 1 / ways <= fraction < 1.15 / ways, (part, fraction)
