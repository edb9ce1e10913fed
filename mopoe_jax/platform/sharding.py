"""The device mesh and global batches of the data-parallel step.

One 1-D mesh with axis ``'data'`` spans every device of every process. A global batch is split
over that axis (``PartitionSpec('data')``). The train state is replicated (``PartitionSpec()``),
or its large arrays are split over the same axis (`split_sharding`: one dimension cut in as many
pieces as there are devices), which `mopoe_jax.training.step` decides per array. Each process
feeds its own rows (`to_global_batch`), so the batch must divide over the devices and the
processes (`check_batch_divisible`).
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

DATA_AXIS = "data"


def make_data_mesh(devices=None) -> Mesh:
  """A 1-D mesh with axis 'data' over ``devices`` (default: all devices of all processes).

  The axis type is Auto: Explicit axes break the reshapes of the conv networks.
  """
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh(
    (len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
  )


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of the train state: a full copy on every device."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """The sharding of a global batch: rows split over the 'data' axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def split_axis(shape, num_devices: int, min_elements: int) -> int | None:
  """The dimension of an array of ``shape`` to split over ``num_devices`` devices, or None (keep
  it whole on every device).

  None below ``min_elements`` elements (small arrays: the split saves little and costs a
  collective) or when no dimension divides by the devices. Otherwise the largest dimension that
  divides, a leading one before the last (minor) one: on TPUs the minor dimension is laid out
  across the vector lanes, and cutting it pads every piece.
  """
  size = 1
  for d in shape:
    size *= int(d)
  if num_devices < 2 or size < min_elements:
    return None
  fits = [i for i, d in enumerate(shape) if d % num_devices == 0 and d >= num_devices]
  leading = [i for i in fits if i < len(shape) - 1]
  for candidates in (leading, fits):
    if candidates:
      return max(candidates, key=lambda i: (shape[i], -i))
  return None


def split_sharding(shape, mesh: Mesh, min_elements: int) -> NamedSharding:
  """An array of ``shape`` split along `split_axis` over the mesh axis 'data' (each device
  holds 1/N of it), or replicated where `split_axis` keeps it whole."""
  axis = split_axis(shape, _num_devices(mesh), min_elements)
  if axis is None:
    return replicated(mesh)
  spec = [None] * len(shape)
  spec[axis] = DATA_AXIS
  return NamedSharding(mesh, P(*spec))


def _num_devices(mesh_or_num_devices: Mesh | int) -> int:
  if isinstance(mesh_or_num_devices, Mesh):
    mesh = mesh_or_num_devices
    return mesh.shape[DATA_AXIS] if DATA_AXIS in mesh.axis_names else mesh.size
  return int(mesh_or_num_devices)


def check_batch_divisible(
  global_batch_size: int, mesh_or_num_devices: Mesh | int, what: str = "devices"
) -> None:
  """Raises ValueError unless ``global_batch_size`` splits evenly over the devices (or processes).

  ``mesh_or_num_devices`` is a count or a mesh (then the size of its 'data' axis counts).
  """
  n = _num_devices(mesh_or_num_devices)
  if n < 1:
    raise ValueError(f"Cannot split a batch over {n} {what}.")
  if global_batch_size < 1:
    raise ValueError(
      f"global batch {global_batch_size} must be positive; use a multiple of {n}, e.g. {n}."
    )
  if global_batch_size % n:
    suggestion = -(-global_batch_size // n) * n
    raise ValueError(
      f"global batch {global_batch_size} does not divide over {n} {what}; use a "
      f"multiple of {n}, e.g. {suggestion}"
    )


def to_global_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Turns each process's numpy batch into global arrays, split over the mesh axis 'data'.

  Every process calls this with its own batch (leading dimension b); each returned array has
  leading dimension ``b * process_count`` and sharding ``NamedSharding(mesh, P('data'))``.
  """
  sizes = {k: np.shape(v)[0] if np.ndim(v) else None for k, v in batch.items()}
  if len(set(sizes.values())) != 1 or None in sizes.values():
    raise ValueError(f"All batch entries need the same leading (batch) dimension, got {sizes}.")
  local_batch_size = next(iter(sizes.values()))
  check_batch_divisible(local_batch_size * jax.process_count(), mesh)
  sharding = batch_sharded(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
  }


def abstract(tree, sharding):
  """Shapes, dtypes and weak types of ``tree`` (arrays or `jax.eval_shape` output) with
  ``sharding``: what ahead-of-time compiles and Orbax restores take. ``sharding`` is one
  sharding for every leaf, or a tree of ``tree``'s structure with one per leaf."""

  def leaf(x, s):
    return jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=s, weak_type=getattr(x, "weak_type", False)
    )

  if isinstance(sharding, jax.sharding.Sharding):
    return jax.tree.map(lambda x: leaf(x, sharding), tree)
  return jax.tree.map(leaf, tree, sharding)
