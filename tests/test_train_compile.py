"""launch/compile.py: ahead-of-time compile of the train step with nothing allocated."""

from __future__ import annotations

from test_train_common import COMPILE_CACHE, tiny_config

from launch.compile import compile_report, format_report
from m2dit_jax.model.flops import train_flops_per_sample
from m2dit_jax.train import model_layout
from m2dit_jax.train.trainer import enable_compilation_cache


def test_compile_report_gives_per_device_memory_and_flops():
    config = tiny_config(heads=4)
    config.mesh.update(dict(data=2, fsdp=2, context=1, tensor=2, num_devices=0))
    enable_compilation_cache(COMPILE_CACHE)
    report = compile_report(config, num_devices=8)
    assert report["mesh"] == dict(data=2, fsdp=2, context=1, tensor=2)
    assert report["argument_bytes"] > 0 and report["temp_bytes"] > 0
    # Params + 2 Adam moments + EMA in f32, sharded: per-device arguments are a fraction of it.
    state_bytes = 4 * 4 * report["params"]
    assert report["argument_bytes"] < state_bytes
    expected = train_flops_per_sample(config.model, model_layout(config)) * 8
    assert report["model_flops_per_step"] == expected
    assert report["xla_flops_per_device"] > 0
    text = format_report("tiny", report)
    assert "per device" in text and "GiB" in text and "step FLOPs" in text


def test_logical_rule_overrides_reach_the_compiled_state():
    config = tiny_config(heads=4)
    config.mesh.update(dict(data=1, fsdp=8, context=1, tensor=1, num_devices=0))
    enable_compilation_cache(COMPILE_CACHE)
    sharded = compile_report(config, num_devices=8)
    # "embed=" replicates the params' width axis: FSDP no longer shards most of the state.
    config.mesh.logical_rules = "embed="
    replicated = compile_report(config, num_devices=8)
    assert replicated["argument_bytes"] > 2 * sharded["argument_bytes"]
