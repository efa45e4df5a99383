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


def test_detail_scale_is_a_scaled_orthonormal_block_transform():
    """detail_scale=s: each colour's 2x2x2 block in the Haar / DCT basis, detail times s —
    lossless, the block mean in coefficient 0, flat blocks without detail, 1.0 = the plain fold."""
    from m2dit_jax.encoders.pixel import block_basis, dct_matrix

    for n in (1, 2, 3, 4):
        m = dct_matrix(n)
        np.testing.assert_allclose(m @ m.T, np.eye(n), atol=1e-12)
    np.testing.assert_allclose(
        block_basis(2, 2, 1.0) @ block_basis(2, 2, 1.0).T, np.eye(8), atol=1e-12
    )
    rng = np.random.default_rng(1)
    video = rng.integers(0, 256, size=(2, 4, 8, 8, 3), dtype=np.uint8)
    plain = SpaceToDepthAutoencoder(2, 2)
    scaled = SpaceToDepthAutoencoder(2, 2, detail_scale=3.0)
    lat, ref = scaled.encode(video), plain.encode(video)
    assert lat.shape == ref.shape == (2, 2, 4, 4, 24)
    np.testing.assert_array_equal(scaled.decode(lat), video)
    np.testing.assert_allclose(scaled.to_pixels(lat), plain.to_pixels(ref), atol=1e-5)
    blocks = ref.reshape(2, 2, 4, 4, 8, 3)
    coeffs = lat.reshape(2, 2, 4, 4, 8, 3)
    np.testing.assert_allclose(coeffs[..., 0, :], blocks.mean(-2) * np.sqrt(8), atol=1e-5)
    # energy: the detail is the block's deviation from its mean, times 3
    dev = ((blocks - blocks.mean(-2, keepdims=True)) ** 2).sum(-2)
    np.testing.assert_allclose((coeffs[..., 1:, :] ** 2).sum(-2), 9 * dev, rtol=1e-4, atol=1e-4)
    flat = np.full((1, 2, 4, 4, 3), 200, np.uint8)
    assert np.abs(scaled.encode(flat).reshape(1, 1, 2, 2, 8, 3)[..., 1:, :]).max() < 1e-6
    np.testing.assert_array_equal(SpaceToDepthAutoencoder(2, 2, 1.0).encode(video), ref)
    for bad in (0.0, -1.0, "2", True):
        with pytest.raises(ValueError, match="detail_scale"):
            SpaceToDepthAutoencoder(2, 2, detail_scale=bad)
    with pytest.raises(ValueError, match="more than one pixel"):
        SpaceToDepthAutoencoder(1, 1, detail_scale=2.0)


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
