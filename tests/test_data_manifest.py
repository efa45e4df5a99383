"""manifest source: PyAV decoding, stage 1/2 frame sampling, bad inputs skipped and counted."""

import json

import numpy as np
import pytest

from m2dit_jax.data import default_data_config, make_dataset
from m2dit_jax.data.bad_input import SKIP_REASONS
from m2dit_jax.data.frame_sampling import span, stage1_offsets, stage2_offsets, stage2_stride
from m2dit_jax.data.video_io import write_mp4

FPS = 10
LEVEL = 5  # frame k is a flat grey frame of value LEVEL * k: decoded frames reveal their index


def _frames(n, h=24, w=32, first=0):
    idx = np.arange(first, first + n)
    return np.broadcast_to((idx * LEVEL)[:, None, None, None], (n, h, w, 3)).astype(np.uint8)


def _index_of(frames):
    return np.round(frames.reshape(len(frames), -1).mean(-1) / LEVEL).astype(int)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    for i in range(6):
        write_mp4(str(root / f"clip{i}.mp4"), _frames(30, first=i), fps=FPS)
    write_mp4(str(root / "film.mp4"), _frames(48), fps=FPS)  # 4.8 s
    good = (root / "clip0.mp4").read_bytes()
    (root / "garbage.mp4").write_bytes(b"\x00this is not a video\xff" * 50)
    (root / "truncated.mp4").write_bytes(good[: len(good) // 3])
    return root


def _write_manifest(root, lines, name="manifest.jsonl"):
    path = root / name
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return str(path)


def _config(path, **kw):
    c = default_data_config()
    c.source, c.path = "manifest", path
    c.num_scenes, c.frames, c.height, c.width = 3, 4, 16, 16
    c.update(kw)
    return c


FILM_SHOTS = [
    {"start": 0.0, "end": 1.2, "caption": "shot zero"},
    {"start": 1.2, "end": 2.0, "caption": "shot one"},
    {"start": 2.0, "end": 3.6, "caption": "shot two"},
    {"start": 3.6, "end": 4.8, "caption": "shot three"},
]


def test_stage1_samples_unrelated_clips_at_stride_3(media):
    path = _write_manifest(media, [{"video": f"clip{i}.mp4", "caption": f"c{i}"} for i in range(6)])
    it = make_dataset(_config(path), seed=0, batch_size=2)
    batch = next(it)
    assert batch["video"].shape == (2, 12, 16, 16, 3) and batch["video"].dtype == np.uint8
    assert batch["captions"].shape == (2, 3) and "cond" not in batch
    for b in range(2):
        for s in range(3):
            clip = int(batch["captions"][b, s][1:])
            found = _index_of(batch["video"][b, 4 * s : 4 * s + 4]) - clip
            assert np.array_equal(np.diff(found), [3, 3, 3]), found
            assert 1 <= found[0] and found[-1] <= 28  # middle 90% of 30 frames: [1, 29)
    assert len(set(batch["captions"].reshape(-1))) == 6  # S unrelated clips, no repeats
    assert it.skip_counts() == dict.fromkeys(SKIP_REASONS, 0)


def test_stage2_takes_consecutive_shots_with_largest_fitting_stride(media):
    path = _write_manifest(media, [{"video": "film.mp4", "shots": FILM_SHOTS}])
    it = make_dataset(_config(path, stage=2), seed=1, batch_size=4)
    batch = next(it)
    starts = {"shot zero": 0, "shot one": 12, "shot two": 20, "shot three": 36}
    strides = {"shot zero": 3, "shot one": 2, "shot two": 3, "shot three": 3}
    seen_first = set()
    for b in range(4):
        caps = list(batch["captions"][b])
        first = [s["caption"] for s in FILM_SHOTS].index(caps[0])
        seen_first.add(first)
        assert caps == [s["caption"] for s in FILM_SHOTS[first : first + 3]]
        for s, cap in enumerate(caps):
            found = _index_of(batch["video"][b, 4 * s : 4 * s + 4])
            assert np.all(np.diff(found) == strides[cap]), (cap, found)
            shot = FILM_SHOTS[[x["caption"] for x in FILM_SHOTS].index(cap)]
            assert starts[cap] <= found[0] and found[-1] < round(shot["end"] * FPS)
        assert batch["ids"][b].startswith("film.mp4#")


def test_frame_sampling_rules():
    rng = np.random.default_rng(0)
    assert span(49, 3) == 145
    for _ in range(50):
        off = stage1_offsets(200, 49, 3, 0.9, rng)
        assert off[0] >= 10 and off[-1] < 190 and np.all(np.diff(off) == 3)
    off = stage1_offsets(150, 49, 3, 0.9, rng)  # does not fit the middle 90%, fits the clip
    assert off[0] >= 0 and off[-1] < 150
    assert stage1_offsets(144, 49, 3, 0.9, rng) is None
    assert [stage2_stride(n, 49, (3, 2, 1)) for n in (145, 144, 97, 96, 49, 48)] == [
        3,
        2,
        2,
        1,
        1,
        None,
    ]
    off = stage2_offsets(100, 49, (3, 2, 1), rng)
    assert np.all(np.diff(off) == 2) and off[-1] < 100
    assert stage2_offsets(48, 49, (3, 2, 1), rng) is None


BAD_LINES = [
    ({"video": "missing.mp4", "caption": "gone"}, "missing_file"),
    ({"video": "garbage.mp4", "caption": "garbage"}, "unreadable_video"),
    ({"video": "truncated.mp4", "caption": "truncated"}, "unreadable_video"),
    ({"video": "clip0.mp4", "caption": "too short", "start": 0.0, "end": 0.5}, "too_short"),
]


@pytest.mark.parametrize(
    "line, reason", BAD_LINES, ids=[r for _, r in BAD_LINES][:2] + ["trunc", "short"]
)
def test_bad_video_is_skipped_counted_and_strict_raises(media, line, reason):
    good = [{"video": f"clip{i}.mp4", "caption": f"c{i}"} for i in range(3)]
    path = _write_manifest(media, good + [line], name=f"bad_{line['caption'][:4]}.jsonl")
    # Stage 1 with one scene per sample: the bad clip is its own sample.
    it = make_dataset(_config(path, num_scenes=1, num_epochs=1), seed=0, batch_size=2)
    batches = [next(it), next(it)]
    for batch in batches:
        assert batch["video"].shape == (2, 4, 16, 16, 3)
        assert line["caption"] not in batch["captions"]
    counts = it.skip_counts()
    assert counts[reason] >= 1 and sum(counts.values()) == counts[reason]
    strict = make_dataset(_config(path, num_scenes=1, strict=True), seed=0, batch_size=4)
    with pytest.raises(ValueError, match=reason):
        next(strict)


def test_bad_manifest_lines_are_counted_while_indexing(media):
    lines = [
        {"video": "clip0.mp4", "caption": "fine"},
        "{not json",
        {"caption": "no video"},
        {"video": "clip1.mp4", "caption": "   "},
        {"video": "clip2.mp4"},
        {"video": "film.mp4", "shots": FILM_SHOTS[:2]},  # 2 shots < S=3 in stage 2
        {"video": "film.mp4", "shots": FILM_SHOTS},
    ]
    path = _write_manifest(media, lines, name="mixed.jsonl")
    it = make_dataset(_config(path, stage=2), seed=0, batch_size=1)
    assert next(it)["video"].shape == (1, 12, 16, 16, 3)
    counts = it.skip_counts()
    assert counts["bad_manifest_line"] == 2 and counts["empty_caption"] == 2
    # the valid single-scene line and the 2-shot film cannot make a 3-scene stage-2 sample
    assert counts["too_few_shots"] == 2
    with pytest.raises(ValueError, match="not valid JSON"):
        make_dataset(_config(path, stage=2, strict=True), seed=0, batch_size=1)
