"""Partial denoising (``start_step``, SDEdit-style) through the sampling pipeline.

A run restarted at step k from the full run's latents after step k-1 must end where the full
run ends, with and without classifier-free guidance; missing latents are an error."""

import numpy as np
import pytest
from bundle_helpers import write_tiny_bundle

from m2dit_jax.inference import bundle as bundle_lib
from m2dit_jax.inference.pipeline import SamplingPipeline
from m2dit_jax.inference.script import SamplerOptions

VIDEO = {"num_scenes": 2, "frames": 2, "height": 8, "width": 8}
CAPTIONS = [["a red square moves left", "the object turns blue and moves up"]] * 2


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    path = write_tiny_bundle(str(tmp_path_factory.mktemp("partial") / "bundle"), VIDEO, seed=1)
    return SamplingPipeline.from_bundle(bundle_lib.load_bundle(path))


@pytest.mark.parametrize("name, guidance", [("ddim", 1.0), ("ddim", 3.0)])
def test_restart_from_the_runs_own_latents_ends_where_the_run_ends(pipe, name, guidance):
    sampler = SamplerOptions(name=name, steps=5, guidance_scale=guidance, seed=0)
    seen = {}
    full = pipe.sample_latents(
        CAPTIONS, sampler, callback=lambda step, t, latents: seen.setdefault(step, latents)
    )
    part = pipe.sample_latents(CAPTIONS, sampler, noise=seen[2], start_step=3)
    np.testing.assert_allclose(np.asarray(part), np.asarray(full), rtol=1e-6, atol=1e-6)


def test_start_step_needs_latents_and_a_valid_step(pipe):
    sampler = SamplerOptions(name="ddim", steps=5, guidance_scale=1.0, seed=0)
    with pytest.raises(ValueError, match="start_step > 0 needs noise"):
        pipe.sample_latents(CAPTIONS, sampler, start_step=2)
    noise = np.zeros((2, 4, 4, 4, 12), np.float32)
    with pytest.raises(ValueError, match="start_step must be in"):
        pipe.sample_latents(CAPTIONS, sampler, noise=noise, start_step=5)
