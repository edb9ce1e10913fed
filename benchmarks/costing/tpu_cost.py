"""A Cloud TPU run costed before it is booked: the train step compiled for a slice not owned.

With libtpu installed (``pip install -e '.[tpu]'``), JAX describes a TPU slice from its name
alone (``jax.experimental.topologies.get_topology_desc``: compile-only devices, no TPU needed),
and XLA:TPU compiles the train step for it on any machine. `cost_step` compiles the step over a
``('data',)`` mesh of the slice's chips and reads what XLA reports per chip: the memory the
step needs (arguments, outputs not aliased to them, temporaries; against the chip's HBM), its
FLOPs and HBM bytes (cost analysis), and from those a roofline time per step: the larger of
FLOPs over the chip's bfloat16 peak and bytes over its HBM bandwidth. A lower bound: it leaves
out collectives, host transfers and the input pipeline. The chips' figures are `TPU_CHIPS`
(Google Cloud's published ones). ``benchmarks/tpu_cost.py`` prints the table for a config and a
list of slices; docs/performance.md has today's.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import ml_collections

from mopoe_jax.data.datasource import MODEL_KEYS
from mopoe_jax.platform import sharding, speed
from mopoe_jax.training import step as step_lib
from mopoe_jax.vae import model as model_lib


@dataclasses.dataclass(frozen=True)
class TpuChip:
  hbm_bytes: float
  hbm_bytes_per_second: float
  chip_config_name: str  # how libtpu names the cores per chip: 'megacore' (v4, v5p) or 'default'


# Per chip, published by Google Cloud (the bfloat16 peak: `speed.PEAK_FLOPS`).
TPU_CHIPS = {
  "v4": TpuChip(32 * 2**30, 1228e9, "megacore"),
  "v5e": TpuChip(16 * 2**30, 819e9, "default"),
  "v5p": TpuChip(95 * 2**30, 2765e9, "megacore"),
  "v6e": TpuChip(32 * 2**30, 1640e9, "default"),
}
# What the chip calls itself (device_kind) for `speed.peak_flops`.
_DEVICE_KINDS = {"v4": "TPU v4", "v5e": "TPU v5 lite", "v5p": "TPU v5p", "v6e": "TPU v6 lite"}


def topology(name: str):
  """The compile-only devices of a slice such as 'v5e:2x4' or 'v4:2x2x1' (libtpu needed)."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  generation = name.split(":")[0]
  if generation not in TPU_CHIPS:
    raise ValueError(f"Unknown TPU generation in {name!r}; known: {sorted(TPU_CHIPS)}.")
  dims = name.split(":")[1].split("x")
  # libtpu names v5p's topology "v5"; a host holds 2x2 chips on every generation here.
  return topologies.get_topology_desc(
    platform="tpu",
    topology_name=name.replace("v5p:", "v5:"),
    chip_config_name=TPU_CHIPS[generation].chip_config_name,
    chips_per_host_bounds=(2, 2, 1),
    num_slices=1,
    wrap=(False,) * max(len(dims), 3),
  )


def cost_step(
  config: ml_collections.ConfigDict, vocab_size: int, slice_name: str, per_chip_batch: int
) -> dict:
  """Compiles the train step of ``config`` for the slice at ``per_chip_batch`` studies per
  chip and returns its per-chip figures (see the module docstring)."""
  generation = slice_name.split(":")[0]
  chip = TPU_CHIPS[generation]
  devices = topology(slice_name).devices
  mesh = jax.sharding.Mesh(devices, (sharding.DATA_AXIS,))
  replicated, sharded = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  model = model_lib.create_model(config, vocab_size, platform="tpu")
  step_config = step_lib.StepConfig.from_config(config, model, pad_id=1)
  state = sharding.abstract(
    jax.eval_shape(functools.partial(step_lib.init_state, model, config), jax.random.PRNGKey(0)),
    replicated,
  )
  global_batch = per_chip_batch * len(devices)
  batch = sharding.abstract(
    {k: v for k, v in model_lib.dummy_batch(config, global_batch).items() if k in MODEL_KEYS},
    sharded,
  )
  rng = jax.ShapeDtypeStruct((2,), jax.numpy.uint32, sharding=replicated)
  jitted = jax.jit(
    functools.partial(step_lib.train_step, model=model, step_config=step_config),
    in_shardings=(replicated, sharded, replicated),
    out_shardings=(replicated, replicated),
    donate_argnums=(0,),
  )
  tic = time.perf_counter()
  compiled = jitted.lower(state, batch, rng).compile()
  seconds = time.perf_counter() - tic
  memory = compiled.memory_analysis()
  needed = (
    memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    - memory.alias_size_in_bytes
    + memory.temp_size_in_bytes
  )
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  flops, traffic = float(analysis["flops"]), float(analysis["bytes accessed"])
  peak = speed.peak_flops(_DEVICE_KINDS[generation])
  compute_s, memory_s = flops / peak, traffic / chip.hbm_bytes_per_second
  return {
    "slice": slice_name,
    "chips": len(devices),
    "per_chip_batch": per_chip_batch,
    "global_batch": global_batch,
    "compile_seconds": seconds,
    "argument_bytes": memory.argument_size_in_bytes,
    "temp_bytes": memory.temp_size_in_bytes,
    "bytes_needed": needed,
    "hbm_bytes": chip.hbm_bytes,
    "fits": needed <= chip.hbm_bytes,
    "flops": flops,
    "bytes_accessed": traffic,
    "roofline_step_seconds": max(compute_s, memory_s),
    "bound_by": "HBM bandwidth" if memory_s > compute_s else "compute",
  }


def largest_batch_estimate(small: dict, large: dict) -> int:
  """The largest per-chip batch whose memory fits the chip's HBM, by a straight line through
  two costed batches (memory grows linearly in the batch: activations and the batch itself)."""
  slope = (large["bytes_needed"] - small["bytes_needed"]) / (
    large["per_chip_batch"] - small["per_chip_batch"]
  )
  if slope <= 0:
    raise ValueError("memory did not grow with the batch; cost two batches farther apart.")
  fixed = small["bytes_needed"] - slope * small["per_chip_batch"]
  return int((small["hbm_bytes"] - fixed) // slope)
