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
