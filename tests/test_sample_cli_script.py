"""Sampling-script validation: clear errors for the cases a user gets wrong."""

import pytest

from m2dit_jax.inference.script import load_script, parse_script


def _write(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return str(path)


def test_full_script(tmp_path):
    path = _write(
        tmp_path,
        "negative: blurry\nsampler: {name: dpm, steps: 4, guidance_scale: 2, seed: 3}\n"
        "window: 3\nscenes:\n  - caption: a red square moves left\n    negative: green\n"
        "  - the object turns blue and moves up\n",
    )
    script = load_script(path)
    assert script.captions == ["a red square moves left", "the object turns blue and moves up"]
    assert script.negatives == ["green", "blurry"]
    assert (script.sampler.name, script.sampler.steps, script.sampler.seed) == ("dpm", 4, 3)
    assert script.sampler.guidance_scale == 2.0 and script.window == 3


@pytest.mark.parametrize(
    "text, message",
    [
        ("scenes: []\n", "'scenes' is empty"),
        ("sampler: {steps: 2}\n", "missing 'scenes'"),
        ("scenes:\n  - negative: x\n", "scene 1 has no 'caption'"),
        ("scenes:\n  - caption: a\n  - {caption: ''}\n", "scene 2 'caption' must be a non-empty"),
        ("scenes: [a]\nsampler: {name: euler}\n", "sampler.name"),
        ("scenes: [a]\nsampler: {steps: 0}\n", "sampler.steps"),
        ("scenes: [a]\ncolour: red\n", "unknown key"),
        ("scenes: [a]\nwindow: 1\n", "'window'"),
        ("scenes: [a\n", "not valid YAML"),
    ],
)
def test_bad_scripts(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load_script(_write(tmp_path, text))


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_script(str(tmp_path / "nope.yaml"))
    with pytest.raises(ValueError, match="expected a mapping"):
        parse_script(["a", "b"])


class _FakePipeline:
    """Stands in for SamplingPipeline in launch.sample: every scene is a flat colour, one frame
    per pixel frame the script asks for (no model), so the CLI's bookkeeping is what is tested."""

    def __init__(self):
        from m2dit_jax.inference.pipeline import SamplingPipeline, VideoSpec

        self.video = VideoSpec(num_scenes=2, frames=4, height=16, width=16, fps=4)
        self.meta = {"format": "m2dit_bundle"}
        self.extension_mask = "mask2dit"
        self.calls = []
        self._split = SamplingPipeline.split_video  # the real frame-count checks

    def split_video(self, video, scene_frames=None):
        return self._split(self, video, scene_frames)

    def scene_pixel_frames(self, script):
        return tuple(s.frames or self.video.frames for s in script.scenes)

    def prepare_captions(self, captions):
        pass

    def release_text_encoder(self):
        pass

    def _scenes(self, script, first):
        import numpy as np

        frames = self.scene_pixel_frames(script)
        v = self.video
        return [
            np.full((f, v.height, v.width, 3), 40 + 50 * (first + i), np.uint8)
            for i, f in enumerate(frames)
        ]

    def generate(self, script, *, cache_conditions=False):
        import numpy as np

        self.calls.append(("generate", None))
        return np.concatenate(self._scenes(script, 0))

    def extend(self, video, previous, script, *, cache_conditions=False, previous_frames=None):
        import numpy as np

        self.calls.append(("extend", previous_frames))
        return np.concatenate([video, *self._scenes(script, len(previous))])


def test_sample_cli_records_per_scene_frames(tmp_path, monkeypatch, capsys):
    import json

    from launch import sample as sample_cli
    from m2dit_jax import media
    from m2dit_jax.inference.pipeline import SamplingPipeline

    fake = _FakePipeline()
    monkeypatch.setattr(SamplingPipeline, "from_pretrained", lambda *a, **k: fake)
    ragged = _write(
        tmp_path,
        "scenes:\n  - {caption: a red circle, frames: 3}\n  - {caption: a blue one, frames: 7}\n"
        "  - {caption: a green one, frames: 5}\n",
    )
    out = str(tmp_path / "ragged.mp4")
    base = ["--model", str(tmp_path), "--no-progress", "--scale", "2"]
    paths = sample_cli.main([*base, "--script", ragged, "--out", out, "--gif", "--sheet"])
    assert media.read_video(out).shape[0] == 15
    side = json.load(open(sample_cli.sidecar_path(out)))
    assert side["scene_frames"] == [3, 7, 5] and side["frames_per_scene"] is None
    assert "3 scenes of 3, 7, 5 frames at 16x16" in capsys.readouterr().out
    assert len(paths) == 4  # mp4, gif, sheet, sidecar

    # --extend: the previous scenes' frames come from the sidecar, the new ones from the script
    more = tmp_path / "more.yaml"
    more.write_text("scenes:\n  - {caption: a yellow one, frames: 2}\n")
    longer = str(tmp_path / "longer.mp4")
    sample_cli.main([*base, "--script", str(more), "--extend", out, "--out", longer])
    assert fake.calls[-1] == ("extend", (3, 7, 5))
    assert media.read_video(longer).shape[0] == 17
    side = json.load(open(sample_cli.sidecar_path(longer)))
    assert side["scene_frames"] == [3, 7, 5, 2] and side["frames_per_scene"] is None

    # equal scenes: frames_per_scene kept, scene_frames too; extension on the equal path
    equal = _write(tmp_path, "scenes: [a red circle, a blue circle]\n")
    out = str(tmp_path / "equal.gif")
    sample_cli.main([*base, "--script", equal, "--out", out])
    side = json.load(open(sample_cli.sidecar_path(out)))
    assert side["scene_frames"] == [4, 4] and side["frames_per_scene"] == 4
    assert "2 scenes x 4 frames" in capsys.readouterr().out
    sample_cli.main(
        [*base, "--script", str(more), "--extend", out, "--out", str(tmp_path / "e.gif")]
    )
    assert fake.calls[-1] == ("extend", None)
    assert json.load(open(str(tmp_path / "e.gif.scenes.json")))["scene_frames"] == [4, 4, 2]

    # a sidecar whose scene_frames do not add up to the video is refused before any sampling
    with open(sample_cli.sidecar_path(longer), "w") as f:
        json.dump({"captions": ["a", "b", "c", "d"], "scene_frames": [3, 7, 5, 3]}, f)
    with pytest.raises(SystemExit):
        sample_cli.main([*base, "--script", str(more), "--extend", longer, "--out", out])
    assert "add up to 18 frames" in capsys.readouterr().err


@pytest.mark.slow
def test_sample_cli_ragged_script_on_a_tiny_pipeline_folder(tmp_path, capsys):
    """The real pipeline (tiny random CogVideoX folder of test_pipeline_folder): a script with
    per-scene ``frames:`` gives a video of those frames, recorded in the sidecar."""
    import json

    from test_pipeline_folder import FRAMES, SIZE, TEXT_LEN, build_jax_folder

    from launch import sample as sample_cli
    from m2dit_jax import media
    from m2dit_jax.inference import pipeline_folder as pf

    folder = str(tmp_path / "model")
    build_jax_folder(folder)
    pf.write_m2dit_json(
        folder, num_scenes=2, frames=FRAMES, height=SIZE, width=SIZE, fps=8, text_len=TEXT_LEN
    )
    script = _write(
        tmp_path,
        "sampler: {steps: 1, guidance_scale: 1.0, seed: 0}\n"
        "scenes:\n  - {caption: a red ball, frames: 17}\n  - {caption: a cat, frames: 1}\n",
    )
    out = str(tmp_path / "ragged.mp4")
    sample_cli.main(
        ["--model", folder, "--script", script, "--out", out, "--dtype", "float32",
         "--no-progress"]
    )  # fmt: skip
    assert media.read_video(out).shape == (18, SIZE, SIZE, 3)
    side = json.load(open(sample_cli.sidecar_path(out)))
    assert side["scene_frames"] == [17, 1] and side["frames_per_scene"] is None
    assert "2 scenes of 17, 1 frames" in capsys.readouterr().out
