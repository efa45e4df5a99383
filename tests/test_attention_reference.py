"""The dense ``xla`` backend against a float64 NumPy softmax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_helpers import numpy_masked_attention

from m2dit_jax.attention import masked_attention
from m2dit_jax.layout import SceneLayout


@pytest.mark.parametrize(
    "layout",
    [
        SceneLayout(1, 5, 1, 2, 3),
        SceneLayout(3, 7, 2, 2, 3),
        SceneLayout(3, 7, 2, 3, 2, text_pad_to=4),
        SceneLayout(5, 3, 1, 1, 2),
    ],
)
def test_xla_matches_float64_numpy(layout):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, layout.seq_len, 3, 8)).astype(np.float32) for _ in range(3))
    out = jax.jit(lambda q, k, v: masked_attention(q, k, v, layout))(q, k, v)
    ref = numpy_masked_attention(q, k, v, layout.dense_mask())
    assert out.shape == q.shape and out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-6, rtol=1e-5)


def test_bad_qkv_named():
    layout = SceneLayout(2, 3, 1, 2, 2)
    x = jnp.zeros((1, layout.seq_len, 2, 4))
    with pytest.raises(ValueError, match="k has sequence length"):
        masked_attention(x, x[:, :-1], x, layout)
    with pytest.raises(ValueError, match="q must have shape"):
        masked_attention(x[0], x, x, layout)
    with pytest.raises(ValueError, match="unknown attention backend"):
        masked_attention(x, x, x, layout, backend="nope")
