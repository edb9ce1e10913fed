"""NVIDIA GPUs costed before they are booked: the train step compiled for GPUs not owned.

With JAX's CUDA plugin installed (the ``jax-cuda12-plugin`` and ``jax-cuda12-pjrt`` wheels of
the installed jax's version; no CUDA libraries and no GPU needed) and ``JAX_PLATFORMS=cpu`` set
before JAX is imported (so that the plugin is not started as a backend), XLA's GPU compiler
compiles for GPUs described by a target spec (`gpu_targets`). `cost_step` compiles the loop's
train step (`step_cost.compile_train_step`) over one GPU or several of one machine and returns
`step_cost.figures` against the GPU's data-sheet peak and bandwidth. No autotuning runs (there is
no GPU to time kernels on), so XLA picks its kernels by its heuristics.
"""

from __future__ import annotations

import ml_collections

from benchmarks.costing import gpu_targets, step_cost


def topology(gpu: str, count: int):
  """``count`` compile-only GPUs of kind ``gpu`` ('h100', 'h200') in one machine."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  return topologies.get_topology_desc(
    platform="cuda", target_config=gpu_targets.target_config(gpu), topology=f"1x1x{count}"
  )


def cost_step(
  config: ml_collections.ConfigDict,
  vocab_size: int,
  gpu: str,
  count: int,
  per_device_batch: int,
  hlo_path: str | None = None,
) -> dict:
  """The train step of ``config`` on ``count`` GPUs of kind ``gpu`` at ``per_device_batch``
  studies per GPU: `step_cost.figures` plus the GPU's memory and whether the step fits."""
  spec = gpu_targets.GPUS[gpu]
  step = step_cost.compile_train_step(
    config, vocab_size, topology(gpu, count).devices, per_device_batch, "cuda"
  )
  out = step_cost.figures(
    step, spec.peak_bf16_flops, spec.hbm_bytes_per_second, spec.link_bytes_per_second, hlo_path
  )
  out.update(
    target=f"{gpu}:{count}",
    device_memory_bytes=spec.memory_bytes,
    fits=out["bytes_needed"] <= spec.memory_bytes,
  )
  return out
