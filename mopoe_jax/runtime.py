"""The platform and its settings: XLA:CPU flags, the persistent compilation cache, start-up on
several processes.

Everything here that was chosen by measuring XLA:CPU applies on the CPU backend only; GPU and
TPU runs get XLA's defaults. Compiled programs (one jitted object per program, fast compiles,
background compiles, traced programs kept on disk) are in `mopoe_jax.compilation`.

- ``CPU_FLAGS``: on XLA:CPU (jaxlib 0.10), convolutions rewritten into individual YNNPACK calls
  made this model's paper-size training step slower than XLA's own convolution emitter: 2.23 vs
  1.83 s per step of 8 on 2 cores, measured interleaved
  (benchmarks/results/step_optimization.md, issue #6).
  ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` turns that one rewrite
  off. XLA reads XLA_FLAGS when a backend starts, before JAX can say which backend it will use,
  so `apply_defaults` decides from the environment (`planned_backend`).
- `enable_compilation_cache`: JAX's persistent compilation cache, so that a resumed or
  re-evaluated run loads the compiled step instead of compiling it again.
- `initialize_distributed`: ``jax.distributed`` for a run on several processes.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os

from absl import logging
import jax

CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)


def planned_backend(environ=os.environ) -> str:
  """'cpu', or the accelerator platform JAX will use, decided without starting JAX.

  ``JAX_PLATFORMS`` decides when set (its first entry); otherwise an installed accelerator
  plugin (jax[cuda12], jax[cuda13], jax[tpu]: a ``jax_plugins`` entry point or ``libtpu``) means
  an accelerator ('accelerator' when the platform cannot be told), and nothing means 'cpu'.
  """
  platforms = environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms.split(",")[0].strip().lower()
  if importlib.util.find_spec("libtpu") is not None:
    return "tpu"
  plugins = [ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")]
  plugins += [m for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin")
              if importlib.util.find_spec(m) is not None]
  if any("cuda" in name for name in plugins):
    return "cuda"
  return "accelerator" if plugins else "cpu"


def apply_defaults(environ=os.environ) -> str:
  """Appends CPU_FLAGS to XLA_FLAGS when the planned backend is the CPU.

  Call before the first JAX computation (backends read XLA_FLAGS when they start). A flag whose
  option the user already set is left as the user set it. Returns the resulting XLA_FLAGS. Set
  MOPOE_XLA_DEFAULTS=0 to leave XLA_FLAGS alone.
  """
  flags = environ.get("XLA_FLAGS", "")
  if environ.get("MOPOE_XLA_DEFAULTS", "1") != "0" and planned_backend(environ) == "cpu":
    for flag in CPU_FLAGS:
      name = flag.split("=", 1)[0]
      if name not in flags:
        flags = f"{flags} {flag}".strip()
    environ["XLA_FLAGS"] = flags
  return flags


def enable_compilation_cache(directory: str) -> str:
  """Points JAX's persistent compilation cache at ``directory`` (created if missing)."""
  directory = os.path.abspath(os.path.expanduser(directory))
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  logging.info("JAX compilation cache: %s", directory)
  return directory


def initialize_distributed(train_config) -> None:
  """``jax.distributed.initialize`` for a run on several processes (``train.multihost``).

  ``train.coordinator_address`` ('host:port' of process 0), ``train.num_processes`` and
  ``train.process_id`` are passed when set; a field left None is found by JAX
  (JAX_COORDINATOR_ADDRESS, or the SLURM, Open MPI and Cloud TPU environments). On CPU the
  processes' collectives run over gloo (TCP). Call before any other JAX call.
  """
  if planned_backend() == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {k: train_config.get(k) for k in ("coordinator_address", "num_processes",
                                             "process_id")}
  kwargs = {k: v for k, v in kwargs.items() if v is not None}
  try:
    jax.distributed.initialize(**kwargs)
  except (ValueError, TypeError) as e:
    raise ValueError(
        f"Cannot start JAX on several processes with {kwargs or 'nothing set'}: {e} Set "
        "--config.train.coordinator_address=HOST:PORT (process 0's address), "
        "--config.train.num_processes=N and --config.train.process_id=I (0 .. N-1, one per "
        "process), or run under SLURM, Open MPI or on Cloud TPU, where JAX finds them.") from e
  logging.info("JAX process %d of %d: %d local device(s), %d in all.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  if jax.default_backend() == "cpu" and jax.process_index() != 0:
    logging.warning(
        "Process %d on the CPU backend compiles every program on every start: JAX writes its "
        "persistent compilation cache from process 0 only, and on CPU the other processes' "
        "cache keys differ from process 0's (they hash each process's own view of the device "
        "topology; seen with jax 0.10 and 0.12). The traced train step stored beside the cache "
        "(its lowered/ folder) is still shared. Do not set jax_share_binary_between_hosts on "
        "CPU: this process would wait for a binary under its own key, which process 0 never "
        "publishes.",
        jax.process_index())


