"""NVIDIA GPUs described to XLA without one: the text of a ``stream_executor.GpuTargetConfigProto``.

JAX's CUDA plugin compiles for a GPU that is not there when it is given the GPU's description
(``jax.experimental.topologies.get_topology_desc(platform="cuda", target_config=<text>)``). The
field values below are those of the H100 SXM and H200 specs in the OpenXLA repository,
``xla/backends/gpu/target_config/specs/h100_sxm.txtpb`` (commit 0774019d97e7) and ``h200.txtpb``
(commit 4336d12e0706), which XLA's authors recorded from the devices; `target_config` writes them
out as the text proto. Left out: ``collective_memory_granularity``, a field the 0.10.2 plugin
does not know (it rejects the whole text), and the free-text ``model_str``.

The two GPUs are the same Hopper chip (GH100: 132 SMs, the same clocks and units); they differ in
memory: 80 GB of HBM3 at 3.35 TB/s against 141 GB of HBM3e at 4.8 TB/s. `GPUS` also has the
vendor's figures the roofline uses (`GpuSpec.peak_bf16_flops`, `GpuSpec.hbm_bytes_per_second`):
NVIDIA's data sheets give 989 TFLOP/s of dense bfloat16 for both (the sheets' 1,979 is with 2:4
sparsity), which is what the spec's matrix units give too: 132 SMs x 4 tensor cores x 512 bfloat16
multiply-adds per clock x 1.83 GHz x 2.
"""

from __future__ import annotations

import dataclasses

# Units per SM of one type: (clock GHz, units per core, operations per clock), keyed by XLA's
# PrimitiveType number (4 S32, 8 U32, 10 F16, 11 F32, 12 F64, 16 BF16, 19/20 two FP8 types...).
_HOPPER_SCALAR_UNITS = {
  4: (1.98, 64, 1),
  8: (1.98, 64, 1),
  10: (1.98, 128, 2),
  11: (1.98, 128, 1),
  12: (1.98, 64, 1),
  16: (1.98, 128, 2),
}
_TENSOR_CLOCK = 1.8295201
_HOPPER_MATRIX_UNITS = {
  **{k: (_TENSOR_CLOCK, 4, 1024) for k in (2, 6, 19, 20, 23, 24, 25, 28, 29, 33, 35, 36)},
  10: (_TENSOR_CLOCK, 4, 512),
  11: (_TENSOR_CLOCK, 4, 256),
  12: (1.98, 4, 32),
  16: (_TENSOR_CLOCK, 4, 512),
}
# Fields both GPUs share (the GH100 chip with the software versions the specs were taken with).
_HOPPER = {
  "threads_per_block_limit": 1024,
  "threads_per_warp": 32,
  "shared_memory_per_block": 49152,
  "shared_memory_per_core": 233472,
  "threads_per_core_limit": 2048,
  "core_count": 132,
  "fpus_per_core": 128,
  "block_dim_limit_x": 2147483647,
  "block_dim_limit_y": 65535,
  "block_dim_limit_z": 65535,
  "l2_cache_size": 52428800,
  "clock_rate_ghz": 1.98,
  "shared_memory_per_block_optin": 232448,
  "registers_per_core_limit": 65536,
  "registers_per_block_limit": 65536,
  "thread_dim_limit_x": 1024,
  "thread_dim_limit_y": 1024,
  "thread_dim_limit_z": 64,
  "device_vendor": "NVIDIA Corporation",
  "platform_version": "Compute Capability 9.0a",
  "device_address_bits": 64,
  "pcie_bandwidth": 34359738368,
  "ecc_enabled": True,
  "driver_version": "13.0.0",
  "runtime_version": "12.8.0",
  "compile_time_toolkit_version": "12.8.0",
  "dnn_version": "9.10.0",
  "cub_version": "3.1.2",
}


@dataclasses.dataclass(frozen=True)
class GpuSpec:
  name: str  # the device name CUDA reports (JAX's device_kind)
  memory_bytes: int  # device memory as CUDA reports it (the spec's device_memory_size)
  memory_bandwidth: int  # bytes/s, as in the spec (the data sheet's figure)
  dnn_version: tuple[int, int, int]  # cuDNN version of the spec's dnn_version_info
  peak_bf16_flops: float  # dense, NVIDIA's data sheet
  hbm_bytes_per_second: float  # NVIDIA's data sheet
  link_bytes_per_second: float = 450e9  # NVLink 4: 900 GB/s bidirectional per GPU, 450 each way


GPUS = {
  "h100": GpuSpec("NVIDIA H100 80GB HBM3", 84942979072, 3352320000000, (8, 9, 4), 989e12, 3.35e12),
  "h200": GpuSpec(
    "NVIDIA H200 141GB HBM3e", 151397597184, 4800000000000, (9, 10, 0), 989e12, 4.8e12
  ),
}


def _value(v) -> str:
  if isinstance(v, bool):
    return "true" if v else "false"
  if isinstance(v, str):
    return f'"{v}"'
  return repr(v)


def _units(field: str, table: dict) -> list[str]:
  lines = [f"  {field} {{"]
  for key, (clock, units, ops) in sorted(table.items()):
    lines += [
      "    rate_infos {",
      f"      key: {key}",
      "      value {",
      f"        clock_rate_ghz: {clock!r}",
      f"        units_per_core: {units}",
      f"        ops_per_clock: {ops}",
      "      }",
      "    }",
    ]
  return lines + ["  }"]


def target_config(gpu: str) -> str:
  """The ``GpuTargetConfigProto`` text of ``gpu`` ('h100' or 'h200')."""
  if gpu not in GPUS:
    raise ValueError(f"Unknown GPU {gpu!r}; known: {sorted(GPUS)}.")
  spec = GPUS[gpu]
  fields = dict(
    _HOPPER,
    memory_bandwidth=spec.memory_bandwidth,
    device_memory_size=spec.memory_bytes,
    name=spec.name,
  )
  lines = ["gpu_device_info {"]
  lines += [f"  {k}: {_value(v)}" for k, v in fields.items()]
  lines += [
    "  cuda_compute_capability {",
    "    major: 9",
    "    feature_extension: ACCELERATED_FEATURES",
    "  }",
  ]
  lines += _units("scalar_unit_description", _HOPPER_SCALAR_UNITS)
  lines += _units("matrix_unit_description", _HOPPER_MATRIX_UNITS)
  lines += ["  device_interconnect_info {", "    active_links: 18", "  }", "}"]
  major, minor, patch = spec.dnn_version
  lines += [
    'platform_name: "CUDA"',
    "dnn_version_info {",
    f"  major: {major}",
    f"  minor: {minor}",
    f"  patch: {patch}",
    "}",
    f'device_description_str: "{spec.name}"',
  ]
  return "\n".join(lines) + "\n"


def matrix_peak_flops(gpu: str, primitive_type: int = 16) -> float:
  """FLOP/s of the spec's matrix units for a type (16: bfloat16): SMs x units x multiply-adds
  per clock x clock x 2 (a check on the data sheet's figure)."""
  clock, units, ops = _HOPPER_MATRIX_UNITS[primitive_type]
  return _HOPPER["core_count"] * units * ops * clock * 1e9 * 2
