"""The speed figures of the training log (mopoe_jax.platform.speed)."""

import jax
import jax.numpy as jnp
import pytest

from mopoe_jax.platform import speed


@pytest.mark.parametrize(
  "kind, peak",
  [
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5", 459e12),
    ("TPU v5p", 459e12),
    ("TPU v6 lite", 918e12),
    ("NVIDIA L4", 121e12),
    ("NVIDIA L40S", None),
    ("cpu", None),
  ],
)
def test_peaks_by_device_kind(kind, peak):
  assert speed.peak_flops(kind) == peak


def test_interval_figures_and_the_log_line():
  gib = 2.0**30
  figures = speed.interval_figures(
    steps=10,
    seconds=5.0,
    data_seconds=1.0,
    global_batch=32,
    step_flops=1e12,
    device_kind="NVIDIA H100 80GB HBM3",
    memory=(2 * gib, 3 * gib),
  )
  assert figures["steps_per_second"] == 2.0 and figures["examples_per_second"] == 64.0
  assert figures["data_wait_share"] == pytest.approx(0.2)
  assert figures["device_memory_gib"] == 2.0 and figures["device_peak_memory_gib"] == 3.0
  assert figures["mfu"] == pytest.approx(2e12 / 989e12)
  assert speed.describe(figures, "NVIDIA H100 80GB HBM3") == (
    "2.00 steps/s, 64 examples/s, 20% waiting for data, memory 2.00 GiB (peak 3.00 GiB), MFU 0.2%"
  )
  # The CPU: no memory figures, no peak: unknown, with the achieved rate.
  cpu = speed.interval_figures(
    steps=10,
    seconds=5.0,
    data_seconds=0.0,
    global_batch=32,
    step_flops=1e12,
    device_kind="cpu",
    memory=None,
  )
  assert "mfu" not in cpu and "device_memory_gib" not in cpu
  assert cpu["model_tflops_per_device"] == pytest.approx(2.0)
  assert speed.describe(cpu, "cpu").endswith(
    "memory unknown, 2.000 TFLOP/s per device (MFU unknown: no peak known for 'cpu')"
  )


def test_flops_come_from_xla_cost_analysis():
  compiled = jax.jit(lambda x: x @ x).lower(jnp.ones((64, 64))).compile()
  assert speed.program_flops(compiled) == 2 * 64**3

  class NoAnalysis:
    def cost_analysis(self):
      raise NotImplementedError

  assert speed.program_flops(NoAnalysis()) is None
