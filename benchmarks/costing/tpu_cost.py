"""A Cloud TPU run costed before it is booked: the train step compiled for a slice not owned.

With libtpu installed (``pip install -e '.[tpu]'``), JAX describes a TPU slice from its name
alone (``jax.experimental.topologies.get_topology_desc``: compile-only devices, no TPU needed),
and XLA:TPU compiles the train step for it on any machine. `cost_step` compiles the training
loop's step over a ``('data',)`` mesh of the slice's chips (`step_cost.compile_train_step`: the
state laid out as the training code lays it out) and reads per chip (`step_cost.figures`): the
memory the step needs against the chip's HBM, its FLOPs, XLA's ``bytes accessed`` and the HBM
bytes of the optimized program's HBM-resident buffers (`hlo_traffic`, with where they go), and
the roofline time per step: the larger of FLOPs over the chip's bfloat16 peak and HBM bytes over
its bandwidth. A lower bound: it leaves out collectives, host transfers and the input pipeline.
The chips' figures are `TPU_CHIPS` (Google Cloud's published ones).
``benchmarks/accelerator_cost.py`` prints the tables; docs/performance.md has today's.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from benchmarks.costing import step_cost
from mopoe_jax.platform import speed


@dataclasses.dataclass(frozen=True)
class TpuChip:
  hbm_bytes: float
  hbm_bytes_per_second: float
  chip_config_name: str  # how libtpu names the cores per chip: 'megacore' (v4, v5p) or 'default'
  link_bytes_per_second: float | None = None  # inter-chip interconnect, one way (None: unknown)


# Per chip, published by Google Cloud (the bfloat16 peak: `speed.PEAK_FLOPS`); v5e's interconnect:
# 400 GB/s bidirectional per chip, 200 GB/s each way.
TPU_CHIPS = {
  "v4": TpuChip(32 * 2**30, 1228e9, "megacore"),
  "v5e": TpuChip(16 * 2**30, 819e9, "default", 200e9),
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


def peak_flops(generation: str) -> float:
  """The chip's dense bfloat16 FLOP/s (`speed.PEAK_FLOPS`)."""
  return speed.peak_flops(_DEVICE_KINDS[generation])


def cost_step(
  config: ml_collections.ConfigDict,
  vocab_size: int,
  slice_name: str,
  per_chip_batch: int,
  hlo_path: str | None = None,
) -> dict:
  """Compiles the loop's train step of ``config`` for the slice at ``per_chip_batch`` studies
  per chip (`step_cost.compile_train_step`) and returns its per-chip figures
  (`step_cost.figures`) with the chip's HBM and whether the step fits."""
  generation = slice_name.split(":")[0]
  chip = TPU_CHIPS[generation]
  step = step_cost.compile_train_step(
    config, vocab_size, topology(slice_name).devices, per_chip_batch, "tpu"
  )
  out = step_cost.figures(
    step,
    peak_flops(generation),
    chip.hbm_bytes_per_second,
    chip.link_bytes_per_second,
    hlo_path,
  )
  out.update(
    target=slice_name,
    device_memory_bytes=chip.hbm_bytes,
    fits=out["bytes_needed"] <= chip.hbm_bytes,
  )
  return out
