"""Evaluation of ragged multi-scene videos (scenes of their own lengths, e.g. 3, 7, 5 frames)."""

import json
import os

import numpy as np
import pytest

from launch import eval as eval_cli
from launch.sample import write_outputs
from m2dit_jax.data.synthetic_shapes import Script, ShapesGeometry, render_scene
from m2dit_jax.eval import consistency, cuts, report, report_output, synthetic_metrics
from m2dit_jax.media import enlarge

RAGGED = (3, 7, 5)


def _render(script: Script, backgrounds, scene_frames, seed: int) -> np.ndarray:
    """Ground truth: scene i of ``scene_frames[i]`` frames over ``backgrounds[i]``; as in
    ``render_script``, a shorter scene is a prefix of a longest-scene rendering (same step)."""
    rng = np.random.default_rng(seed)
    geometry = ShapesGeometry(frames=max(scene_frames), height=16, width=16)
    scenes = [
        render_scene(script.shape, b, c, m, geometry, rng)[:f]
        for b, c, m, f in zip(backgrounds, script.colours, script.motions, scene_frames)
    ]
    return np.concatenate(scenes)


A = Script(shape=0, background=0, colours=(0, 2, 3), motions=(1, 3, 0))
B = Script(shape=1, background=0, colours=(1, 1, 0), motions=(2, 0, 1))


def _write(folder, name, script, lengths, seed, **kw):
    video = _render(script, (0, 2, 1), lengths, seed)
    out = os.path.join(folder, name + ".mp4")
    write_outputs(out, video, script.captions(), fps=4, scale=4, gif=False, sheet=False, **kw)
    return out


def test_boundaries_are_the_cumulative_scene_starts():
    assert cuts.boundaries_from_frames(RAGGED) == [3, 10]
    assert cuts.boundaries_from_frames([4, 4, 4]) == cuts.scene_boundaries(3, 4)
    assert cuts.boundaries_from_frames([6]) == []
    with pytest.raises(ValueError, match="positive integers"):
        cuts.boundaries_from_frames([3, 0])
    with pytest.raises(ValueError, match="add up to 15 frames, but the video has 14"):
        cuts.video_cut_accuracy(np.zeros((14, 4, 4, 3), np.uint8), 3, scene_frames=RAGGED)


def test_ragged_ground_truth_cuts_all_found():
    pytest.importorskip("scenedetect")
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(8):
        backgrounds = rng.permutation(3)  # consecutive scenes differ in background
        script = Script(0, 0, tuple(rng.integers(4, size=3)), tuple(rng.integers(4, size=3)))
        video = enlarge(_render(script, backgrounds, RAGGED, seed), 4)
        rows.append(cuts.video_cut_accuracy(video, 3, scene_frames=RAGGED))
    assert all(r["boundaries"] == [3, 10] for r in rows)
    summary = cuts.summarize_cuts(rows)
    assert summary["boundary_recall"] == 1.0 and summary["spurious_cuts"] == 0
    assert rows[0]["detected"] == [3, 10]


def test_split_scenes_and_detectors_follow_the_counts():
    video = _render(A, (0, 2, 1), RAGGED, 0)
    parts = consistency.split_scenes(video, 3, RAGGED)
    assert [len(p) for p in parts] == list(RAGGED)
    with pytest.raises(ValueError, match="add up to"):
        consistency.split_scenes(video, 3, (3, 7, 4))
    rows = synthetic_metrics.score_video(video, A, scene_frames=RAGGED)
    assert [r["scene"] for r in rows] == [0, 1, 2]
    assert all(r["colour_ok"] and r["motion_ok"] and r["shape_ok"] for r in rows)
    one = synthetic_metrics.score_video(
        _render(A, (0, 2, 1), (4, 1, 3), 0), A, scene_frames=(4, 1, 3)
    )
    assert "motion_ok" not in one[1] and one[2]["motion_ok"] and one[1]["colour_ok"]
    embed = lambda f: f.reshape(len(f), -1, 3).mean(1) + 1.0  # noqa: E731
    text = lambda c: np.ones((len(c), 3))  # noqa: E731
    out = consistency.video_consistency(
        video, A.captions(), image_embed=embed, text_embed=text, scene_frames=RAGGED
    )
    assert 0 < out["visual_consistency"] <= 100 and 0 < out["semantic_consistency"] <= 100


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    pytest.importorskip("scenedetect")
    root = tmp_path_factory.mktemp("ragged")
    videos = str(root / "videos")
    os.makedirs(videos)
    _write(videos, "ragged", A, RAGGED, 0, scene_frames=RAGGED)
    _write(videos, "equal", B, (4, 4, 4), 1, frames_per_scene=4)
    return root, videos


def test_sidecar_records_scene_frames(folder):
    _, videos = folder
    with open(os.path.join(videos, "ragged.mp4.scenes.json")) as f:
        side = json.load(f)
    assert side["scene_frames"] == [3, 7, 5] and side["frames_per_scene"] is None
    with open(os.path.join(videos, "equal.mp4.scenes.json")) as f:
        side = json.load(f)
    assert side["scene_frames"] == [4, 4, 4] and side["frames_per_scene"] == 4
    video = report.load_video(os.path.join(videos, "ragged.mp4"))
    assert video.scene_frames == RAGGED and video.frames_per_scene is None and video.ragged
    assert video.scene_starts == [0, 3, 10] and len(video.frames) == 15
    assert report.read_sidecar(os.path.join(videos, "equal.mp4"))[1] == 4
    assert report.load_video(os.path.join(videos, "equal.mp4")).frames_per_scene == 4


def test_cli_over_a_ragged_and_an_equal_video(folder, capsys):
    root, videos = folder
    out = str(root / "out" / "report.json")
    paths = eval_cli.main(["--videos", videos, "--out", out, "--no-progress"])
    assert paths == [out, out[:-5] + ".md", out[:-5] + ".png"]
    with open(out) as f:
        result = json.load(f)
    assert result["num_videos"] == 2 and result["num_ragged"] == 1
    assert result["cuts"]["boundary_recall"] == 1.0 and result["cuts"]["spurious_cuts"] == 0
    equal, ragged = result["videos"]  # sorted by file name
    assert ragged["file"] == "ragged.mp4" and ragged["scene_frames"] == [3, 7, 5]
    assert ragged["frames_per_scene"] is None and ragged["cuts"]["boundaries"] == [3, 10]
    assert [s["cut_found"] for s in ragged["scenes"]] == [None, True, True]
    assert [s["frames"] for s in ragged["scenes"]] == [3, 7, 5]
    assert equal["scene_frames"] == [4, 4, 4] and equal["cuts"]["boundaries"] == [4, 8]
    assert result["synthetic"]["num_scenes_scored"] == 6
    assert result["synthetic"]["colour_ok"] == 1.0 and result["synthetic"]["motion_ok"] == 1.0
    with open(out[:-5] + ".md") as f:
        md = f.read()
    assert "| ragged.mp4 | 3 | 2/2 | 0 |" in md and "| 3+7+5 |" in md
    assert "(1 with scenes of their own lengths)" in md
    assert "cut boundary recall (±1 frame): 100.0% (4/4)" in capsys.readouterr().out


def test_ragged_consistency_in_the_report(folder):
    _, videos = folder
    video = report.load_video(os.path.join(videos, "ragged.mp4"))
    row = report.score_video(
        video,
        image_embed=lambda f: f.reshape(len(f), -1, 3).mean(1) + 1.0,
        text_embed=lambda c: np.ones((len(c), 3)),
    )
    assert set(row["consistency"]) == {
        "visual_consistency",
        "semantic_consistency",
        "sequence_consistency",
    }
    assert all(0 < s["semantic"] <= 100 for s in row["scenes"])
    md = report_output.markdown({"num_videos": 1, "videos_dir": videos, **_summary(row)})
    assert "| 3+7+5 |" in md


def _summary(row):
    return {
        "cuts": {**cuts.summarize_cuts([row["cuts"]]), "tolerance": 1},
        "videos": [row],
    }


def _error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        eval_cli.main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "sidecar, message",
    [
        ({"scene_frames": [3, 7, 4]}, "add up to 14"),
        ({"scene_frames": [3, 12]}, "has 2 entries for its 3 captions"),
        ({"scene_frames": [3, 0, 12]}, "must be a list of positive integers"),
        ({"scene_frames": [3, 7, 5], "frames_per_scene": 5}, "disagree with 'frames_per_scene'"),
    ],
)
def test_bad_scene_frames_are_clear_errors(folder, tmp_path, capsys, sidecar, message):
    _, videos = folder
    bad = tmp_path / "bad"
    bad.mkdir()
    os.link(os.path.join(videos, "ragged.mp4"), bad / "x.mp4")
    (bad / "x.mp4.scenes.json").write_text(json.dumps({"captions": A.captions(), **sidecar}))
    err = _error(["--videos", str(bad), "--out", str(tmp_path / "r.json"), "--no-progress"], capsys)
    assert str(bad / "x.mp4") in err and message in err
