"""The layout planner (``launch.compile --topology T --search``) without compiling: candidates
over remat policies and rule presets, recompute estimates, ranking, per-chip state bytes."""

from __future__ import annotations

import copy

import pytest
from test_train_common import COMPILE_CACHE, tiny_config

from m2dit_jax.model.config import REMAT_POLICIES
from m2dit_jax.sharding import RULE_PRESETS
from m2dit_jax.train import aot
from m2dit_jax.train.trainer import enable_compilation_cache


def test_search_covers_every_remat_policy_and_rule_preset():
    config = tiny_config(heads=4)
    ok, rejected = aot.search_candidates(
        config, 8, context=(1, 2), remat=("all",), logical_rules=("presets",)
    )
    assert not rejected
    policies = [p for p in REMAT_POLICIES if p != "none"]
    assert {c.model.remat for c in ok} == set(policies)
    assert {c.mesh.logical_rules for c in ok} == set(RULE_PRESETS)
    assert len(ok) == 2 * len(policies) * len(RULE_PRESETS)
    zero3 = next(c for c in ok if c.mesh.logical_rules == "zero3" and c.mesh.context == 2)
    assert (zero3.mesh.data, zero3.mesh.fsdp, zero3.mesh.tensor) == (1, 4, 1)


@pytest.mark.parametrize("remat", [p for p in REMAT_POLICIES])
def test_recompute_factor_is_between_no_and_full_remat(remat):
    config = copy.deepcopy(tiny_config(heads=4))
    config.model.remat = remat
    factor = aot.recompute_factor(config)
    assert 1.0 <= factor <= 4 / 3 + 1e-12
    if remat in ("none",):
        assert factor == 1.0
    if remat in ("full", "offload_input", "offload_attn"):
        assert factor == pytest.approx(4 / 3)
    if remat in ("save_attn", "save_qkv_attn", "save_dots"):
        assert factor < 4 / 3


def test_ranking_prefers_less_compute_then_no_offload():
    base = dict(batch_per_chip=1, mesh=dict(data=1, fsdp=8, context=1, tensor=1), peak_bytes=1)
    full = dict(base, est_compute_s=4.0, remat="full")
    offload = dict(base, est_compute_s=4.0, remat="offload_input")
    save = dict(base, est_compute_s=3.5, remat="save_attn")
    assert aot.ranking_key(full) < aot.ranking_key(offload)
    assert aot.best_layout([dict(r, fits=True) for r in (offload, full, save)])["remat"] == (
        "save_attn"
    )


def test_cpu_compile_reports_state_bytes_per_device():
    from launch.compile import compile_report

    enable_compilation_cache(COMPILE_CACHE)
    config = tiny_config(heads=4)
    config.mesh.update(dict(data=1, fsdp=2, context=2, tensor=1, num_devices=0))
    report = compile_report(config, num_devices=4)
    for part in ("param", "opt", "ema"):
        local, total = report[f"{part}_bytes_per_device"], report[f"{part}_bytes_total"]
        assert total / 4.4 < local < total / 3, part  # sharded over fsdp x context = 4
