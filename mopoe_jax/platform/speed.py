"""How fast a run is: the figures of each log interval, and a profile on request.

Per log interval (`interval_figures`): steps/s and examples/s (training time only: evaluations
are left out), the share of that time spent waiting for the input pipeline, device memory in
use and its peak (where the backend reports them: GPU and TPU do, the CPU does not), and the
model FLOPs utilisation (MFU): the train step's FLOPs per device, as XLA's cost analysis of the
compiled step counts them, times steps/s, over the device's peak (`PEAK_FLOPS`). The CPU has no
peak in the table, so its MFU is reported as unknown, not invented.

``train.profile_steps`` > 0 traces that many steps with ``jax.profiler``, starting after the
second step of the run's start, into ``<workdir>/plugins/profile/``, which TensorBoard's Profile
tab opens (`StepProfile`).
"""

from __future__ import annotations

import re

from absl import logging
import jax

from mopoe_jax.platform import paths

# Dense bfloat16 FLOP/s per chip (one JAX device; no sparsity), from the vendors' data sheets;
# the first entry whose name is a word of the device's ``device_kind`` (or torch's device name)
# applies, so the more specific go first. The PCIe and NVL parts of the H100/H200 clock lower.
PEAK_FLOPS = (
  ("H100 PCIe", 756e12),  # NVIDIA H100 PCIe
  ("H100", 989e12),  # NVIDIA H100 SXM ("NVIDIA H100 80GB HBM3")
  ("H200", 989e12),  # NVIDIA H200 (the H100's compute, more memory)
  ("A100", 312e12),  # NVIDIA A100 (SXM and PCIe)
  ("L4", 121e12),  # NVIDIA L4
  ("A10G", 70e12),  # NVIDIA A10G
  ("TPU v4", 275e12),  # TPU v4
  ("TPU v5 lite", 197e12),  # TPU v5e
  ("TPU v5e", 197e12),
  ("TPU v5p", 459e12),  # TPU v5p
  ("TPU v5", 459e12),  # TPU v5p reports "TPU v5"
  ("TPU v6 lite", 918e12),  # TPU v6e (Trillium)
  ("TPU v6e", 918e12),
)


def peak_flops(device_kind: str) -> float | None:
  """The device's peak dense bfloat16 FLOP/s, or None where the table has none (the CPU)."""
  for name, flops in PEAK_FLOPS:
    if re.search(rf"(?<!\w){re.escape(name)}(?!\w)", device_kind or "", re.IGNORECASE):
      return flops
  return None


def program_flops(compiled) -> float | None:
  """FLOPs of one run of a compiled program on one device (XLA's cost analysis), or None."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-exception-caught  (not every backend has one)
    return None
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per module
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def device_memory(devices=None) -> tuple[float, float] | None:
  """(bytes in use, peak bytes in use), the largest over this process's devices; None where the
  backend does not report them."""
  stats = [d.memory_stats() for d in (devices or jax.local_devices())]
  stats = [s for s in stats if s and "bytes_in_use" in s]
  if not stats:
    return None
  return (
    float(max(s["bytes_in_use"] for s in stats)),
    float(max(s.get("peak_bytes_in_use", s["bytes_in_use"]) for s in stats)),
  )


def interval_figures(
  *,
  steps: int,
  seconds: float,
  data_seconds: float,
  global_batch: int,
  step_flops: float | None,
  device_kind: str,
  memory,
) -> dict:
  """The speed figures of one log interval (TensorBoard scalars; absent where unknown)."""
  seconds = max(seconds, 1e-9)
  figures = {
    "steps_per_second": steps / seconds,
    "examples_per_second": steps * global_batch / seconds,
    "data_wait_share": min(max(data_seconds / seconds, 0.0), 1.0),
  }
  if memory is not None:
    figures["device_memory_gib"], figures["device_peak_memory_gib"] = (m / 2**30 for m in memory)
  peak = peak_flops(device_kind)
  if step_flops is not None:
    figures["model_tflops_per_device"] = step_flops * figures["steps_per_second"] / 1e12
    if peak is not None:
      figures["mfu"] = step_flops * figures["steps_per_second"] / peak
  return figures


def describe(figures: dict, device_kind: str) -> str:
  """The log line's speed part, e.g. '2.1 steps/s, 134 examples/s, 3% waiting for data,
  memory 1.2 GiB (peak 1.5 GiB), MFU 31.0%'; what is unknown says so."""
  text = (
    f"{figures['steps_per_second']:.2f} steps/s, {figures['examples_per_second']:.0f} "
    f"examples/s, {100 * figures['data_wait_share']:.0f}% waiting for data, "
  )
  if "device_memory_gib" in figures:
    text += (
      f"memory {figures['device_memory_gib']:.2f} GiB (peak "
      f"{figures['device_peak_memory_gib']:.2f} GiB), "
    )
  else:
    text += "memory unknown, "
  if "mfu" in figures:
    return text + f"MFU {100 * figures['mfu']:.1f}%"
  if "model_tflops_per_device" in figures:
    return text + (
      f"{figures['model_tflops_per_device']:.3f} TFLOP/s per device (MFU unknown: "
      f"no peak known for {device_kind!r})"
    )
  return text + "MFU unknown"


class StepProfile:
  """``profile(step)`` after each step: traces the ``num_steps`` steps after ``start_step + 2``
  with ``jax.profiler`` into ``<workdir>/plugins/profile/``; `close` ends a trace still running.

  What clu's ``periodic_actions.Profile`` does for one window, written here because clu's
  periodic actions import TensorFlow (through its metric writers) and the library does not.
  """

  def __init__(self, workdir: str, start_step: int, num_steps: int):
    self._workdir, self._first = workdir, start_step + 2
    self._last = self._first + num_steps
    self._running = False

  def __call__(self, step: int) -> None:
    if step == self._first:
      jax.profiler.start_trace(self._workdir)
      self._running = True
      logging.info("Profiling steps %d to %d (jax.profiler).", step + 1, self._last)
    elif self._running and step >= self._last:
      self.close()

  def close(self) -> None:
    if self._running:
      jax.profiler.stop_trace()
      self._running = False
      logging.info(
        "Profile written to %s (TensorBoard: the Profile tab of tensorboard --logdir %s).",
        paths.join(self._workdir, "plugins", "profile"),
        self._workdir,
      )
