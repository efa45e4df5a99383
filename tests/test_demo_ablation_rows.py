"""`make demo`'s ablation rows: finding the ablation bundles, the per-script rows, spec checks.

No training: one tiny random-init bundle, copied to where ``benchmarks/ablation.py`` puts the
"full" / "independent" runs (the copies keep mask 1, so their rows must equal the demo's own
samples when the noise is reproduced)."""

import json
import os
import shutil

import numpy as np
import pytest
from bundle_helpers import write_tiny_bundle

from launch.demo import ablation_sheet_rows
from m2dit_jax.ablation import find_ablation_bundles
from m2dit_jax.data.synthetic_shapes import sample_held_out_scripts
from m2dit_jax.inference import bundle as bundle_lib
from m2dit_jax.inference.pipeline import SamplingPipeline
from m2dit_jax.inference.script import SamplerOptions

VIDEO = {"num_scenes": 3, "frames": 2, "height": 8, "width": 8}


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    main = write_tiny_bundle(str(root / "bundle"), VIDEO, seed=3)
    for run in ("full_s0", "full_s1", "independent_s0", "mask2dit_s0"):
        shutil.copytree(main, root / "ablation" / run / "bundle")
    os.makedirs(root / "ablation" / "independent_s-1")  # not a run folder
    os.makedirs(root / "ablation" / "full_s2")  # a run not exported yet
    return root


def test_find_ablation_bundles(run_folder, tmp_path):
    found = find_ablation_bundles(str(run_folder / "ablation"))
    assert found == {
        "full": str(run_folder / "ablation" / "full_s0" / "bundle"),
        "independent": str(run_folder / "ablation" / "independent_s0" / "bundle"),
    }
    assert list(found) == ["full", "independent"]
    assert find_ablation_bundles(str(tmp_path / "missing")) == {}
    assert find_ablation_bundles(str(tmp_path)) == {}


def test_rows_per_script_and_spec_mismatch(run_folder):
    main_dir = str(run_folder / "bundle")
    pipe = SamplingPipeline.from_bundle(bundle_lib.load_bundle(main_dir))
    scripts = sample_held_out_scripts(3, VIDEO["num_scenes"], seed=0)
    captions = [s.captions() for s in scripts]
    sampler = SamplerOptions(name="ddim", steps=2, guidance_scale=1.0, seed=0)
    videos = pipe.decode_latents(pipe.sample_latents(captions, sampler))
    bundles = find_ablation_bundles(str(run_folder / "ablation"))

    kwargs = dict(spec=pipe.video, scripts=scripts, videos=videos, sampler=sampler)
    rows, row_captions, titles, record = ablation_sheet_rows(
        bundles, batch_size=len(captions), main_bundle=main_dir, **kwargs
    )
    assert titles == [
        "script_00: Mask2DiT (mask 1)",
        "script_00: no mask (full attention)",
        "script_00: independent scenes",
        "script_01: Mask2DiT (mask 1)",
        "script_01: no mask (full attention)",
        "script_01: independent scenes",
    ]
    assert row_captions == [captions[0]] * 3 + [captions[1]] * 3
    assert len(rows) == 6 and all(r.shape == videos[0].shape for r in rows)
    # same captions, sampler and initial noise (copies of the demo bundle): the demo's samples
    for i, row in enumerate(rows):
        diff = np.abs(row.astype(np.int32) - np.asarray(videos[i // 3]).astype(np.int32))
        assert diff.max() <= 1, titles[i]
    assert record["bundles"] == bundles
    assert [r["model"] for r in record["rows"]] == ["mask2dit", "full", "independent"] * 2
    assert record["rows"][0]["bundle"] == main_dir
    assert all(len(r["scenes"]) == VIDEO["num_scenes"] for r in record["rows"])
    assert all("colour" in scene for r in record["rows"] for scene in r["scenes"])
    json.dumps(record)  # goes into eval.json

    # an ablation bundle of another video geometry fails loudly, naming both bundles
    odd = run_folder / "odd_full"
    shutil.copytree(main_dir, odd)
    config = json.load(open(odd / "config.json"))
    config["video"]["frames"] = 4
    json.dump(config, open(odd / "config.json", "w"))
    with pytest.raises(ValueError, match="odd_full.*video spec.*demo bundle"):
        ablation_sheet_rows(
            {"full": str(odd)}, batch_size=len(captions), main_bundle=main_dir, **kwargs
        )
