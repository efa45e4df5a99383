"""Named random streams never alias, and the objective's draws are independent of each other."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from m2dit_jax.rng import STREAM_IDS, STREAM_NAMES, stream


def _data(key) -> tuple[int, ...]:
    return tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())


def test_no_two_streams_coincide_and_none_equals_a_split_or_small_fold_in():
    root = jax.random.key(0)
    keys = {f"stream:{n}": stream(root, n) for n in STREAM_NAMES}
    # split(root, n)[i] == fold_in(root, i) (threefry partitionable): these cover every split.
    keys.update({f"split/fold_in({i})": jax.random.fold_in(root, i) for i in range(64)})
    train = stream(root, "train")
    keys.update({f"train step {k}": jax.random.fold_in(train, k) for k in range(64)})
    init = nnx.Rngs(stream(root, "init"))
    keys.update({f"init draw {k}": init.params() for k in range(64)})
    ext = stream(root, "extension")
    keys.update({f"extension {k}": jax.random.fold_in(ext, k) for k in range(8)})
    step = jax.random.fold_in(train, 3)
    keys.update({f"step3 {n}": stream(step, n) for n in STREAM_NAMES})
    seen: dict[tuple[int, ...], str] = {}
    for name, key in keys.items():
        data = _data(key)
        assert data not in seen, f"{name} equals {seen[data]}"
        seen[data] = name
    assert min(STREAM_IDS.values()) >= 2**30


def test_caption_dropout_decisions_do_not_correlate_with_noise():
    # The old aliasing made fold_in(rng, 1) == split(rng, 3)[1]: dropout = f(noise).
    def draws(i):
        rng = jax.random.fold_in(stream(0, "train"), i)
        u = jax.random.uniform(stream(rng, "caption_dropout"), (4,))
        n = jax.random.normal(stream(rng, "noise"), (4,))
        t = jax.random.uniform(stream(rng, "timesteps"), (4,))
        return u, n, t

    u, n, t = jax.vmap(draws)(jnp.arange(2000))
    for a, b in ((u, n), (u, t), (n, t)):
        corr = np.corrcoef(np.asarray(a).ravel(), np.asarray(b).ravel())[0, 1]
        assert abs(corr) < 0.05, corr


def test_unknown_stream_is_an_error():
    with pytest.raises(ValueError, match="unknown random stream"):
        stream(0, "nosie")
