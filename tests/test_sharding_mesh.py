"""m2dit_jax.sharding: topology-aware meshes, hybrid ICI x DCN grids, logical-rule overrides."""

from __future__ import annotations

import dataclasses
import threading

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from m2dit_jax.sharding import (
    LOGICAL_RULES,
    axis_rules,
    current_rules,
    device_grid,
    logical_to_mesh_axes,
    make_mesh,
    parse_logical_rules,
)
from m2dit_jax.train.config_checks import ConfigError, dcn_mesh_shape, resolve_mesh_shape
from m2dit_jax.train.defaults import mesh_defaults


def test_cpu_mesh_keeps_device_order_and_fills_minus_one():
    devices = jax.devices()[:8]
    mesh = make_mesh(dict(data=2, fsdp=-1, tensor=2), devices)
    assert dict(mesh.shape) == dict(data=2, fsdp=2, context=1, tensor=2)
    # CPU devices have no topology: create_device_mesh reshapes them in the given order.
    np.testing.assert_array_equal(mesh.devices.reshape(-1), np.asarray(devices, dtype=object))
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_dcn_needs_that_many_processes_or_slices():
    with pytest.raises(ValueError, match="spans 2 processes, but the devices belong to 1"):
        make_mesh(dict(data=2, fsdp=4), jax.devices()[:8], dcn=dict(data=2))
    with pytest.raises(ValueError, match="not divisible by their dcn factor"):
        make_mesh(dict(data=1, fsdp=8), jax.devices()[:8], dcn=dict(data=2))


@dataclasses.dataclass(frozen=True)
class _FakeGpu:
    id: int
    process_index: int
    platform: str = "gpu"
    device_kind: str = "fake gpu"


def test_hybrid_grid_puts_each_node_in_its_own_dcn_block():
    # 2 nodes x 4 GPUs, listed out of order: devices of one node form one ICI block.
    devices = [_FakeGpu(id=i, process_index=i // 4) for i in (5, 0, 7, 2, 1, 4, 3, 6)]
    grid = device_grid([1, 2, 1, 2], devices, dcn=[2, 1, 1, 1])
    assert grid.shape == (2, 2, 1, 2)
    for node in range(2):
        assert {d.process_index for d in grid[node].reshape(-1)} == {node}
        assert sorted(d.id for d in grid[node].reshape(-1)) == list(range(4 * node, 4 * node + 4))


def test_axis_rules_override_inside_the_block_only():
    names = ("seq", "embed", "mlp")
    assert logical_to_mesh_axes(names) == P("context", "fsdp", "tensor")
    with axis_rules("embed=fsdp+tensor, seq=") as table:
        assert dict(table)["embed"] == ("fsdp", "tensor")
        # tensor is taken by embed, so mlp (later in the spec) is replicated
        assert logical_to_mesh_axes(names) == P(None, ("fsdp", "tensor"), None)
        with axis_rules({"embed": "data"}):  # nested blocks stack
            assert logical_to_mesh_axes(names) == P(None, "data", "tensor")
        seen = []
        worker = threading.Thread(target=lambda: seen.append(current_rules()))
        worker.start()
        worker.join()
        assert seen == [LOGICAL_RULES]  # a context variable, not a module global
    assert current_rules() == LOGICAL_RULES
    assert logical_to_mesh_axes(names) == P("context", "fsdp", "tensor")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ("embd=fsdp", "unknown logical axis 'embd'"),
        ("embed=fsdp+model", "unknown mesh axis 'model'"),
        ("embed", "must look like name=axis1"),
        ("embed=fsdp, embed=tensor", "given twice"),
        ("mlp=tensor+tensor", "names a mesh axis twice"),
    ],
)
def test_bad_rule_overrides_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        parse_logical_rules(overrides)


def test_rule_forms_agree():
    want = (("embed", ("fsdp", "tensor")), ("mlp", None))
    assert parse_logical_rules("embed=fsdp+tensor; mlp=none") == want
    assert parse_logical_rules(["embed=fsdp+tensor", "mlp="]) == want
    assert parse_logical_rules({"embed": ("fsdp", "tensor"), "mlp": None}) == want
    assert parse_logical_rules("") == () and parse_logical_rules(None) == ()


def test_resolve_mesh_shape_multiplies_ici_by_dcn():
    cfg = mesh_defaults()
    cfg.update(dict(fsdp=-1, tensor=2, dcn_data=2))
    assert dcn_mesh_shape(cfg) == dict(data=2, fsdp=1, context=1, tensor=1)
    # 16 devices = 2 slices of 8: per slice fsdp fills 8 / tensor 2 = 4.
    assert resolve_mesh_shape(cfg, 16) == dict(data=2, fsdp=4, context=1, tensor=2)
    with pytest.raises(ConfigError, match="do not divide into the 3 slices"):
        cfg.dcn_data = 3
        resolve_mesh_shape(cfg, 16)
    cfg.update(dict(dcn_data=2, fsdp=8))
    with pytest.raises(ConfigError, match="per slice"):
        resolve_mesh_shape(cfg, 16)
    cfg.update(dict(fsdp=-1, dcn_fsdp=0))
    with pytest.raises(ConfigError, match="mesh.dcn_fsdp=0"):
        resolve_mesh_shape(cfg, 16)
    cfg.update(dict(dcn_fsdp=1, logical_rules="heads=tensr"))
    with pytest.raises(ConfigError, match="mesh.logical_rules: .*unknown mesh axis 'tensr'"):
        resolve_mesh_shape(cfg, 16)
