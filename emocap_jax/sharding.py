"""Device mesh and shardings. Rules are data: the batch is split over every mesh axis, parameters
are replicated, or split over `fsdp` along their largest divisible dimension when that axis exists.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from emocap_jax.cli_errors import UsageError

# Parameters smaller than this stay replicated under FSDP: sharding them saves nothing and costs
# an all-gather each.
FSDP_MIN_SIZE = 2 ** 16


def make_mesh(mesh_config, names: tuple[str, str] = ("config.mesh.data", "config.mesh.fsdp")
              ) -> Mesh:
    """Mesh with axes ("data", "fsdp") from config sizes; -1 takes the remaining devices. Errors
    call the two sizes by `names` (a command's flags, where the sizes came from flags)."""
    devices = jax.devices()
    data, fsdp = int(mesh_config.data), int(mesh_config.fsdp)
    name = {"data": names[0], "fsdp": names[1]}
    if data == -1 and fsdp == -1:
        raise UsageError(f"{name['data']} and {name['fsdp']} cannot both be -1")
    if data == 0 or fsdp == 0 or data < -1 or fsdp < -1:
        raise UsageError(f"{name['data']}={data}, {name['fsdp']}={fsdp}: each is a number "
                         f"of devices (at least 1), or -1 for the remaining devices")
    # A -1 axis takes what the other leaves: the other must divide the devices (reported in the
    # sizes the user gave, not as the "config.mesh.data=0" that len // fsdp made of them).
    for given, other in ((fsdp, data), (data, fsdp)):
        if other == -1 and len(devices) % given:
            fixed, rest = ("fsdp", "data") if given == fsdp else ("data", "fsdp")
            raise UsageError(f"{name[fixed]}={given} does not divide the {len(devices)} "
                             f"devices, so {name[rest]}=-1 cannot take the rest")
    if data == -1:
        data = len(devices) // fsdp
    if fsdp == -1:
        fsdp = len(devices) // data
    if data * fsdp != len(devices):
        raise UsageError(f"{name['data']}={data} x {name['fsdp']}={fsdp} != "
                         f"{len(devices)} devices: the mesh must use every device")
    return Mesh(np.asarray(devices).reshape(data, fsdp), ("data", "fsdp"))


def batch_axes(mesh: Mesh):
    """Mesh axes the batch is split over: all of them (FSDP also splits the batch)."""
    return tuple(name for name in mesh.axis_names if mesh.shape[name] > 1) or ("data",)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def param_sharding(shape_tree, mesh: Mesh):
    """A NamedSharding per parameter (a tree of shapes or arrays)."""
    fsdp = mesh.shape.get("fsdp", 1)

    def rule(x):
        shape = tuple(getattr(x, "shape", x))
        if fsdp <= 1 or int(np.prod(shape)) < FSDP_MIN_SIZE:
            return NamedSharding(mesh, P())
        for dim in np.argsort(shape)[::-1]:
            if shape[dim] % fsdp == 0:
                spec = [None] * len(shape)
                spec[dim] = "fsdp"
                return NamedSharding(mesh, P(*spec))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map(rule, shape_tree,
                                  is_leaf=lambda x: isinstance(x, tuple) or hasattr(x, "shape"))
