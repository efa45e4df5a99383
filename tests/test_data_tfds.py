"""tfds source: manifest -> ArrayRecord (no TensorFlow) -> tfds.data_source -> grain batches."""

import json

import numpy as np
import pytest

from launch.build_tfds import run as build_tfds
from m2dit_jax.data import default_data_config, make_dataset
from m2dit_jax.data.video_io import write_mp4


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds_media")
    rng = np.random.default_rng(0)
    for name, n in (("a.mp4", 20), ("b.mp4", 30)):
        write_mp4(str(root / name), rng.integers(0, 255, (n, 24, 32, 3), np.uint8), fps=10)
    (root / "broken.mp4").write_bytes(b"garbage" * 100)
    shots = [{"start": t, "end": t + 1.0, "caption": f"shot {t:.0f}"} for t in (0.0, 1.0, 2.0)]
    lines = [
        {"video": "a.mp4", "caption": "single clip"},
        {"video": "b.mp4", "shots": shots},
        {"video": "broken.mp4", "caption": "broken"},
        {"video": "a.mp4", "caption": ""},
    ]
    manifest = root / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    data_dir = root / "tfds"
    assert (
        build_tfds(
            [
                "--manifest",
                str(manifest),
                "--data_dir",
                str(data_dir),
                "--height",
                "16",
                "--width",
                "16",
            ]
        )
        == 0
    )
    return str(data_dir)


def _config(path, **kw):
    c = default_data_config()
    c.source, c.path, c.num_scenes, c.frames = "tfds", path, 2, 3
    c.update(kw)
    return c


def test_build_keeps_only_good_videos(tfds_dir):
    import tensorflow_datasets as tfds

    import m2dit_jax.data.tfds_builder  # noqa: F401

    source = tfds.data_source("m2dit_scenes", data_dir=tfds_dir, split="train", download=False)
    assert len(source) == 2
    assert {r["id"] for r in (source[0], source[1])} == {b"a.mp4", b"b.mp4"}


def test_stage1_and_stage2_batches(tfds_dir):
    batch = next(make_dataset(_config(tfds_dir), seed=0, batch_size=2))
    assert batch["video"].shape == (2, 6, 16, 16, 3) and batch["video"].dtype == np.uint8
    assert batch["captions"].shape == (2, 2)
    it = make_dataset(_config(tfds_dir, stage=2), seed=0, batch_size=3)
    batch = next(it)
    for caps in batch["captions"]:
        first = int(caps[0].split()[1])
        assert list(caps) == [f"shot {first}", f"shot {first + 1}"]
    # the single-clip record has 1 < S scenes: skipped, counted
    assert it.skip_counts()["too_few_shots"] >= 1


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="build it with launch/build_tfds.py"):
        make_dataset(_config(str(tmp_path)), seed=0, batch_size=1)
