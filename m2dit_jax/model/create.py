"""``create_model``: build a Mask2DiT, optionally with parameters born sharded on a mesh."""

from __future__ import annotations

import logging
import warnings

import jax
import ml_collections
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from m2dit_jax.model.layers import divisible_spec
from m2dit_jax.model.transformer import Mask2DiT
from m2dit_jax.rng import stream
from m2dit_jax.sharding import logical_to_mesh_axes

log = logging.getLogger(__name__)
_WARNED: set[str] = set()


def _warn_replicated(replicated: list[str], mesh: Mesh) -> None:
    """Warns once per distinct set: these parameter dimensions are replicated, not sharded."""
    if not replicated:
        return
    shown = ", ".join(replicated[:8]) + (
        f" and {len(replicated) - 8} more" if len(replicated) > 8 else ""
    )
    message = (
        f"{len(replicated)} parameter dimension(s) are not divisible by their mesh axes on mesh "
        f"{dict(mesh.shape)} and are replicated on those axes (more memory per device): {shown}"
    )
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def param_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
    """The NamedSharding of every parameter in ``state`` (abstract or concrete) on ``mesh``.

    Reads each Variable's logical names (``out_sharding`` metadata) through the active rule table; a
    dimension the mapped mesh axes do not divide is replicated instead (``divisible_spec``),
    with one warning that names those parameters.
    """
    replicated: list[str] = []

    def to_sharding(path, variable):
        names = variable.get_metadata().get("out_sharding") or (None,) * variable.ndim
        wanted = logical_to_mesh_axes(names)
        spec = divisible_spec(wanted, variable.shape, mesh)
        if spec != wanted:
            name = "/".join(str(getattr(k, "key", k)) for k in path)
            dims = [
                f"dim {i} ({variable.shape[i]}) over {w}"
                for i, (w, g) in enumerate(zip(tuple(wanted), tuple(spec)))
                if w != g
            ]
            replicated.append(f"{name} {'; '.join(dims)}")
        return NamedSharding(mesh, spec)

    out = jax.tree_util.tree_map_with_path(
        to_sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )
    _warn_replicated(replicated, mesh)
    return out


def create_model(
    config: ml_collections.ConfigDict, *, seed: int = 0, mesh: Mesh | None = None
) -> Mask2DiT:
    """Initialises a Mask2DiT from ``config`` with the seed's "init" stream (``m2dit_jax.rng``).

    With ``mesh`` the initialiser is jitted with the parameters' shardings as
    ``out_shardings``: every device materialises only its own shards (no full host copy).
    The values equal the unsharded initialisation with the same seed.
    """
    build = lambda: Mask2DiT(config, rngs=nnx.Rngs(stream(seed, "init")))
    if mesh is None:
        return build()
    abstract = nnx.eval_shape(build)
    graphdef, abstract_state = nnx.split(abstract)
    init = lambda: nnx.state(build())
    shardings = param_shardings(abstract_state, mesh)
    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)
