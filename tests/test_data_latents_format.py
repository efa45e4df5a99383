"""The latents ArrayRecord record schema: round trip, versioning and validation."""

import msgpack
import numpy as np
import pytest

from m2dit_jax.data import latents_format as lf


def _record(i=0, dtype=np.float16, scenes=3):
    rng = np.random.default_rng(i)
    mask = np.zeros((scenes, 6), bool)
    mask[:, :3] = True
    return lf.LatentRecord(
        id=f"video{i}.mp4#0-{scenes}",
        captions=[f"scene {s} caption" for s in range(scenes)],
        latents=rng.standard_normal((scenes, 2, 4, 6, 16)).astype(dtype),
        text_embeds=rng.standard_normal((scenes, 6, 8)).astype(np.float32),
        text_mask=mask,
        meta={"vae": "cogvideox-5b", "scaling_factor": 0.7, "fps": 8},
    )


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_shard_round_trip_is_exact(tmp_path, dtype):
    records = [_record(i, dtype) for i in range(4)]
    path = tmp_path / "shard-00000.array_record"
    assert lf.write_latent_shard(path, records) == 4
    back = list(lf.read_latent_shard(path))
    assert [r.id for r in back] == [r.id for r in records]
    for a, b in zip(records, back):
        assert b.latents.dtype == dtype and b.latents.shape == (3, 2, 4, 6, 16)
        np.testing.assert_array_equal(a.latents, b.latents)
        np.testing.assert_array_equal(a.text_embeds, b.text_embeds)
        np.testing.assert_array_equal(a.text_mask, b.text_mask)
        assert b.captions == a.captions and b.meta == a.meta


def test_source_random_access_over_shards(tmp_path):
    lf.write_latent_shard(tmp_path / "a.array_record-00000-of-00002", [_record(0), _record(1)])
    lf.write_latent_shard(tmp_path / "a.array_record-00001-of-00002", [_record(2)])
    source = lf.LatentShardSource(tmp_path)
    assert len(source) == 3
    assert lf.decode_record(source[2]).id == _record(2).id
    with pytest.raises(ValueError, match="no latents shards"):
        lf.LatentShardSource(tmp_path / "nothing-*.array_record")


def test_version_and_magic_are_checked():
    obj = msgpack.unpackb(lf.encode_record(_record()), raw=False)
    assert obj["version"] == lf.LATENTS_FORMAT_VERSION
    obj["version"] = lf.LATENTS_FORMAT_VERSION + 1
    with pytest.raises(lf.LatentFormatError, match="version"):
        lf.decode_record(msgpack.packb(obj, use_bin_type=True))
    obj["format"] = "something-else"
    with pytest.raises(lf.LatentFormatError, match="format"):
        lf.decode_record(msgpack.packb(obj, use_bin_type=True))
    with pytest.raises(lf.LatentFormatError, match="msgpack"):
        lf.decode_record(b"\xc1garbage")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(latents=np.zeros((3, 2, 4, 16), np.float16)), "latents must be"),
        (dict(latents=np.zeros((3, 2, 4, 6, 16), np.int32)), "latents dtype"),
        (dict(text_embeds=np.zeros((2, 6, 8), np.float32)), "text_embeds must be"),
        (dict(text_mask=np.ones((3, 5), bool)), "text_mask must be"),
        (dict(text_mask=np.zeros((3, 6), bool)), "no real token"),
        (dict(captions=["a", "b"]), "2 captions for 3 scenes"),
        (dict(captions=["a", " ", "c"]), "caption 1 is empty"),
        (dict(id=""), "id must be"),
    ],
)
def test_bad_records_are_rejected(change, message):
    fields = {
        k: getattr(_record(), k)
        for k in ("id", "captions", "latents", "text_embeds", "text_mask", "meta")
    }
    fields.update(change)
    with pytest.raises(lf.LatentFormatError, match=message):
        lf.LatentRecord(**fields)
