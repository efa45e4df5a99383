import numpy as np
import pytest

from m2dit_jax.encoders.pixel import SpaceToDepthAutoencoder
from m2dit_jax.encoders.text import HashedWordEncoder


def test_space_to_depth_roundtrip_is_lossless():
    ae = SpaceToDepthAutoencoder(patch_t=2, patch_s=2)
    video = np.random.default_rng(0).integers(0, 256, (2, 4, 8, 6, 3), dtype=np.uint8)
    z = ae.encode(video)
    assert z.shape == (2, 2, 4, 3, 24) and z.dtype == np.float32
    assert -1.0 <= z.min() and z.max() <= 1.0
    np.testing.assert_array_equal(ae.decode(z), video)
    with pytest.raises(ValueError, match="height=7"):
        ae.encode(np.zeros((1, 4, 7, 6, 3), np.uint8))


def test_hashed_word_encoder_is_deterministic_and_distinct():
    enc = HashedWordEncoder(text_len=6, dim=16)
    e1, m1 = enc.encode(["a red circle moves left", "a blue circle moves left"])
    e2, _ = HashedWordEncoder(text_len=6, dim=16).encode(["a red circle moves left"])
    assert e1.shape == (2, 6, 16) and m1.tolist()[0] == [True] * 5 + [False]
    np.testing.assert_array_equal(e1[0], e2[0])
    assert np.abs(e1[0] - e1[1]).max() > 0.1
    assert (e1[0, 5] == 0).all()
    with pytest.raises(ValueError, match="empty"):
        enc.encode(["  "])
