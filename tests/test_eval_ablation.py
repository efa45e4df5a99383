"""Ablation helpers: configs per variant, aggregation over seeds, the table."""

import pytest

from m2dit_jax import ablation


def test_variant_config_sets_mask_mode_and_budget():
    config = ablation.variant_config("independent", 2, 123)
    assert config.model.mask_mode == "independent"
    assert config.model.attention_backend == "xla"
    assert (config.seed, config.train.num_steps) == (2, 123)
    with pytest.raises(ValueError, match="mask_mode"):
        ablation.variant_config("causal", 0, 10)


def _run(mode, seed, colour, shape):
    metrics = {k: 0.5 for k in (*ablation.HEADLINE, "object_clean")}
    metrics.update(colour_ok=colour, shape_consistent=shape)
    return {"mask_mode": mode, "seed": seed, "metrics": metrics, "final_loss": 0.1}


def test_aggregate_and_format():
    runs = [_run("mask2dit", 0, 1.0, 0.9), _run("mask2dit", 1, 0.8, 0.7), _run("full", 0, 0.3, 0.9)]
    table = ablation.aggregate(runs)
    assert table["mask2dit"]["colour_ok"]["mean"] == pytest.approx(0.9)
    assert table["mask2dit"]["colour_ok"]["std"] == pytest.approx(0.1414, abs=1e-4)
    assert table["full"]["colour_ok"]["std"] == 0.0 and "independent" not in table
    text = ablation.format_ablation(table)
    assert "| mask2dit | 2 | 90.0 ± 14.1 |" in text and "| full | 1 | 30.0 ± 0.0 |" in text


def test_variants_can_start_from_stage_one():
    from launch.demo import ablation_command

    config = ablation.variant_config("full", 0, 10, {"init_from": "runs/demo/pretrain"})
    assert config.init_from == "runs/demo/pretrain" and config.model.mask_mode == "full"
    assert ablation.variant_config("full", 0, 10).init_from == ""  # random weights
    command = ablation_command("runs/demo/ablation", "runs/demo/pretrain")
    assert command.endswith("--variants full independent --init_from runs/demo/pretrain")
    assert "--init_from" not in ablation_command("runs/demo/ablation", None)
    assert " --steps 1250 " in ablation_command("runs/demo/ablation", None, num_steps=1250)
