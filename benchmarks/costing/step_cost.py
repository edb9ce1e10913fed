"""The training loop's own train step, compiled for devices that are not here, and what it costs.

`compile_train_step` builds the step as the loop does (`mopoe_jax.training.programs.Programs`:
the model for the target platform, the state's shapes *and shardings* as the training code lays
them out, replicated or split, and the step function the loop compiles), over a ``('data',)``
mesh of compile-only devices (a TPU slice or GPUs described by name), and compiles it with the
target's compiler. The program is the loop's except that it is jitted directly rather than
through its stored ``jax.export`` form, which is lowered for the host's platform.

`figures` reads per device: the memory the step needs (``compiled.memory_analysis()``:
arguments, outputs not aliased to them, temporaries), FLOPs, XLA's ``bytes accessed`` and the
HBM bytes of `hlo_traffic` with their attribution, and from those a roofline time. FLOPs: the
larger of two counts by XLA's cost analysis. The unoptimized program's over the devices (every
backend: the CUDA plugin has no cost analysis of its own) is exact for the batch's share, but an
update of a replicated state, which every device runs whole, counts once; the compiled
program's (TPU) is per device but counts the body of a loop once (XLA:TPU computes a split
state's weight gradients in loops).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import ml_collections

from benchmarks.costing import hlo_traffic
from mopoe_jax.platform import sharding
from mopoe_jax.training import programs as programs_lib
from mopoe_jax.training import step as step_lib
from mopoe_jax.vae import model as model_lib


@dataclasses.dataclass
class CompiledStep:
  lowered: object
  compiled: object
  num_devices: int
  per_device_batch: int
  lower_seconds: float
  compile_seconds: float


def compile_train_step(
  config: ml_collections.ConfigDict,
  vocab_size: int,
  devices,
  per_device_batch: int,
  platform: str,
) -> CompiledStep:
  """The loop's train step for ``devices`` (compile-only ones will do) at ``per_device_batch``
  studies per device, lowered and compiled for ``platform`` ('tpu', 'cuda', 'cpu')."""
  devices = list(devices)
  config = ml_collections.ConfigDict(config.to_dict())
  config.train.batch_size = per_device_batch * len(devices)
  config.train.per_device_batch_size = None
  mesh = sharding.make_data_mesh(devices)
  model = model_lib.create_model(config, vocab_size, platform=platform)
  step_config = step_lib.StepConfig.from_config(config, model, pad_id=1)
  init_rng = jax.ShapeDtypeStruct((2,), jax.numpy.uint32)
  tic = time.perf_counter()
  programs = programs_lib.Programs.build(config, model, step_config, mesh, init_rng)
  leaves = jax.tree.leaves(programs.abstract)
  state_shardings = [x.sharding for x in leaves]
  batch_shardings = {k: v.sharding for k, v in programs.batch_shape.items()}
  replicated = sharding.replicated(mesh)
  jitted = jax.jit(
    programs.stored_step.fun,  # the step function the loop stores and compiles
    in_shardings=(state_shardings, batch_shardings, replicated),
    out_shardings=(state_shardings, replicated),
    donate_argnums=(0,),
  )
  rng = jax.ShapeDtypeStruct((2,), jax.numpy.uint32, sharding=replicated)
  lowered = jitted.lower(leaves, programs.batch_shape, rng)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  return CompiledStep(
    lowered,
    compiled,
    len(devices),
    per_device_batch,
    lower_seconds=lowered_at - tic,
    compile_seconds=time.perf_counter() - lowered_at,
  )


def memory_needed(compiled) -> dict:
  """Bytes per device the compiled program needs: arguments, outputs not aliased to them and
  temporaries (``compiled.memory_analysis()``)."""
  m = compiled.memory_analysis()
  return {
    "argument_bytes": m.argument_size_in_bytes,
    "output_bytes": m.output_size_in_bytes,
    "alias_bytes": m.alias_size_in_bytes,
    "temp_bytes": m.temp_size_in_bytes,
    "bytes_needed": m.argument_size_in_bytes
    + m.output_size_in_bytes
    - m.alias_size_in_bytes
    + m.temp_size_in_bytes,
  }


def _analysis(analysis) -> dict | None:
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  return analysis or None


def unoptimized_flops(lowered) -> float:
  """FLOPs of the whole (all devices') program before XLA optimizes it: XLA's cost analysis of
  the lowered HLO, run by the host's CPU client (the accelerator's plugin offers none)."""
  from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
  import jax.extend  # pylint: disable=g-import-not-at-top

  cpu = jax.extend.backend.get_backend("cpu")
  module = lowered.compiler_ir("hlo").as_hlo_module()
  return float(_jax.hlo_module_cost_analysis(cpu, module)["flops"])


def figures(
  step: CompiledStep,
  peak_flops: float,
  hbm_bytes_per_second: float,
  link_bytes_per_second: float | None = None,
  hlo_path: str | None = None,
) -> dict:
  """Per device and step: memory, FLOPs (XLA's count of the compiled program where the backend
  has one, and of the unoptimized program over the devices), XLA's bytes accessed, and
  `traffic_figures` of the optimized program. With ``hlo_path``, the program's text is written
  there (`traffic_figures` counts it again without compiling)."""
  out = dict(memory_needed(step.compiled))
  analysis = _analysis(step.compiled.cost_analysis())
  out["unoptimized_flops_per_device"] = unoptimized_flops(step.lowered) / step.num_devices
  out["compiled_flops"] = float(analysis["flops"]) if analysis and analysis.get("flops") else None
  out["xla_bytes_accessed"] = float(analysis["bytes accessed"]) if analysis else None
  out.update(
    devices=step.num_devices,
    per_device_batch=step.per_device_batch,
    global_batch=step.per_device_batch * step.num_devices,
    lower_seconds=step.lower_seconds,
    compile_seconds=step.compile_seconds,
    peak_flops=peak_flops,
    hbm_bytes_per_second=hbm_bytes_per_second,
    link_bytes_per_second=link_bytes_per_second,
  )
  text = step.compiled.as_text()
  if hlo_path:
    with open(hlo_path, "w") as f:
      f.write(text)
  return traffic_figures(out, text)


def traffic_figures(out: dict, hlo_text: str) -> dict:
  """``out`` (`figures` of a compiled step) with the figures of its optimized program's text: the
  HBM bytes of `hlo_traffic` and their groups, the collectives' bytes (their results) and,
  given the interconnect's one-way bandwidth per device, the time to send what ring algorithms
  send of them (`hlo_traffic.Traffic.link_bytes`; not overlapped with anything), and the
  roofline: the larger of FLOPs over the peak and HBM bytes over the bandwidth (a lower bound:
  no host, no input pipeline, collectives apart)."""
  out = dict(out)
  if "compiled_flops" not in out:  # figures written before both were kept
    out["compiled_flops"] = out["flops"] if out.get("flops_from") == "compiled program" else None
  # The larger of the two counts: the compiled program's is per device after XLA's rewrites but
  # counts a loop's body once (the windowed loops of a split state's gradients), the
  # unoptimized one counts a replicated update once for all devices.
  out["flops"], out["flops_from"] = max(
    [(out["unoptimized_flops_per_device"], "unoptimized program / devices")]
    + ([(out["compiled_flops"], "compiled program")] if out["compiled_flops"] else [])
  )
  traffic = hlo_traffic.hbm_traffic(hlo_text)
  out["hbm_bytes"] = traffic.bytes
  out["hbm_groups"] = hlo_traffic.attribute(traffic)
  out["loops_without_trip_count"] = traffic.loops_without_trip_count
  out["collective_bytes"] = traffic.collective_bytes
  out["link_bytes"] = traffic.link_bytes
  link = out["link_bytes_per_second"]
  out["collective_seconds"] = traffic.link_bytes / link if link and out["devices"] > 1 else None
  compute_s = out["flops"] / out["peak_flops"]
  memory_s = traffic.bytes / out["hbm_bytes_per_second"]
  out["compute_seconds"], out["hbm_seconds"] = compute_s, memory_s
  out["roofline_step_seconds"] = max(compute_s, memory_s)
  out["bound_by"] = "HBM bandwidth" if memory_s > compute_s else "compute"
  if out["xla_bytes_accessed"] is not None:
    out["xla_bytes_roofline_step_seconds"] = max(
      compute_s, out["xla_bytes_accessed"] / out["hbm_bytes_per_second"]
    )
  return out


def largest_batch_estimate(small: dict, large: dict, capacity: float) -> int:
  """The largest per-device batch whose memory fits ``capacity`` bytes, by a straight line
  through two costed batches (memory grows linearly in the batch: activations and the batch)."""
  slope = (large["bytes_needed"] - small["bytes_needed"]) / (
    large["per_device_batch"] - small["per_device_batch"]
  )
  if slope <= 0:
    raise ValueError("memory did not grow with the batch; cost two batches farther apart.")
  fixed = small["bytes_needed"] - slope * small["per_device_batch"]
  return int((capacity - fixed) // slope)
