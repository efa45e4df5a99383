"""Test harness: 8 simulated CPU devices, parsed absl flags, backend markers."""

import os

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_configure(config):
    for marker, text in (
        ("parity", "compares against the PyTorch originals (needs the `parity` extra)"),
        ("slow", "takes more than a few seconds"),
        ("tpu", "needs a TPU"),
        ("gpu", "needs a GPU"),
    ):
        config.addinivalue_line("markers", f"{marker}: {text}")


def pytest_collection_modifyitems(config, items):
    platform = jax.devices()[0].platform
    for item in items:
        for marker in ("tpu", "gpu"):
            if marker in item.keywords and platform != marker:
                item.add_marker(
                    pytest.mark.skip(reason=f"needs a {marker.upper()}; this run has {platform}")
                )
