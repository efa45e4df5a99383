"""``create_model``: build a Mask2DiT, optionally with parameters born sharded on a mesh."""

from __future__ import annotations

import jax
import ml_collections
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from m2dit_jax.model.layers import divisible_spec
from m2dit_jax.model.transformer import Mask2DiT
from m2dit_jax.sharding import logical_to_mesh_axes


def param_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
    """The NamedSharding of every parameter in ``state`` (abstract or concrete) on ``mesh``.

    Reads each Variable's logical names (``out_sharding`` metadata) through LOGICAL_RULES; a
    dimension the mapped mesh axes do not divide is replicated instead (``divisible_spec``).
    """

    def to_sharding(variable):
        names = variable.get_metadata().get("out_sharding") or (None,) * variable.ndim
        spec = divisible_spec(logical_to_mesh_axes(names), variable.shape, mesh)
        return NamedSharding(mesh, spec)

    return jax.tree.map(to_sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def create_model(
    config: ml_collections.ConfigDict, *, seed: int = 0, mesh: Mesh | None = None
) -> Mask2DiT:
    """Initialises a Mask2DiT from ``config`` with ``nnx.Rngs(seed)``.

    With ``mesh`` the initialiser is jitted with the parameters' shardings as
    ``out_shardings``: every device materialises only its own shards (no full host copy).
    The values equal the unsharded initialisation with the same seed.
    """
    build = lambda: Mask2DiT(config, rngs=nnx.Rngs(seed))
    if mesh is None:
        return build()
    abstract = nnx.eval_shape(build)
    graphdef, abstract_state = nnx.split(abstract)
    init = lambda: nnx.state(build())
    shardings = param_shardings(abstract_state, mesh)
    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)
