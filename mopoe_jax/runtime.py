"""Backend-dependent settings: XLA:CPU flags, fast compiles of small programs, the compile cache.

Everything here that was chosen by measuring XLA:CPU applies on the CPU backend only; GPU and
TPU runs get XLA's defaults.

- ``CPU_FLAGS``: on XLA:CPU (jaxlib 0.10), convolutions rewritten into individual YNNPACK calls
  made this model's paper-size training step slower than XLA's own convolution emitter: 2.23 vs
  1.83 s per step of 8 on 2 cores, measured interleaved
  (benchmarks/results/step_optimization.md, issue #6).
  ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` turns that one rewrite
  off. XLA reads XLA_FLAGS when a backend starts, before JAX can say which backend it will use,
  so `apply_defaults` decides from the environment (`planned_backend`).
- ``FAST_COMPILE_OPTIONS``: programs that run a handful of times (init, eval, image grids)
  compile in seconds instead of minutes on CPU at LLVM optimization level 1 without the
  expensive passes (`compile_fast`). Level 1 compiles as fast as level 0 and runs much faster:
  the paper-size init compiled in 20.4 s at either level, then ran in 0.9 s instead of 11.0 s
  (its random numbers for 59 M parameters; default options: 59.1 s to compile).
- `enable_compilation_cache`: JAX's persistent compilation cache, so that a resumed or
  re-evaluated run loads the compiled step instead of compiling it again.
- `jitted_once`: the same ``jax.jit`` object for the same program within one process, so a
  second run in that process (a notebook, train then resume, the tests) neither traces, lowers
  nor compiles again.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import threading
import time

from absl import logging
import jax

CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
# XLA:CPU options for programs that run a handful of times (init, eval, image grids).
FAST_COMPILE_OPTIONS = {"xla_backend_optimization_level": 1,
                        "xla_llvm_disable_expensive_passes": True}


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


_JITTED: dict = {}
_JITTED_MAX = 16
_JITTED_LOCK = threading.Lock()


def jitted_once(key, make):
  """``make()`` (a ``jax.jit`` object) the first time ``key`` is seen in this process, the same
  object after that.

  JAX keeps a jitted object's traced, lowered and compiled programs (ahead-of-time
  ``lower().compile()`` included) for as long as the object lives; a fresh ``jax.jit`` of a fresh
  ``functools.partial`` starts from nothing each time. ``key`` must fix the program: the
  function and everything static it closes over (a Flax module and a frozen dataclass hash by
  their fields, a mesh by its devices). The newest 16 are kept.
  """
  with _JITTED_LOCK:
    jitted = _JITTED.pop(key, None)
    if jitted is None:
      jitted = make()
    _JITTED[key] = jitted  # newest last
    while len(_JITTED) > _JITTED_MAX:
      _JITTED.pop(next(iter(_JITTED)))
    return jitted


def compile_fast(jitted, *example_args):
  """Compiles ``jitted`` for ``example_args`` (arrays or shape structs); on the CPU backend with
  FAST_COMPILE_OPTIONS, elsewhere with the backend's defaults."""
  options = FAST_COMPILE_OPTIONS if jax.default_backend() == "cpu" else None
  return jitted.lower(*example_args).compile(compiler_options=options)


def compile_timed(jitted, *example_args, name: str):
  """Lowers and compiles ``jitted`` ahead of time and logs how long each part took."""
  tic = time.perf_counter()
  lowered = jitted.lower(*example_args)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  done = time.perf_counter()
  logging.info("Compiled the %s: lowering %.1f s, compiling %.1f s (a persistent-cache hit "
               "takes well under a second).", name, lowered_at - tic, done - lowered_at)
  return compiled


class BackgroundCompile:
  """Lowers and compiles a program in a thread while the caller does other work.

  XLA compiles without holding Python's GIL, so the train step compiles while the train state
  is initialised or restored and the small programs (eval, grids) compile: on 2 CPU cores the
  first step comes that much sooner. `result` waits and returns the compiled program (or raises
  what lowering or compiling raised). The thread is a daemon: a run that fails before it needs
  the program does not wait for the compile to end.
  """

  def __init__(self, jitted, *example_args, name: str):
    self.name = name
    self._result = self._error = None
    self._thread = threading.Thread(target=self._run, args=(jitted, example_args),
                                    name=f"compile {name}", daemon=True)
    self._started = time.perf_counter()
    self._thread.start()

  def _run(self, jitted, example_args):
    try:
      self._result = compile_timed(jitted, *example_args, name=self.name)
    except BaseException as e:  # pylint: disable=broad-exception-caught
      self._error = e

  def result(self):
    tic = time.perf_counter()
    self._thread.join()
    if self._error is not None:
      raise self._error
    logging.info("The %s was ready %.1f s after its compile started (waited %.1f s for it).",
                 self.name, time.perf_counter() - self._started, time.perf_counter() - tic)
    return self._result


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
