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
- `StoredProgram`: a traced and lowered program kept on disk beside the compilation cache
  (``jax.export``), so that a restart neither traces nor lowers it: the paper-size step takes
  9-15 s of Python to trace and lower on any machine, which the persistent cache alone does not
  save.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import threading
import time

from absl import logging
import jax
from jax import export as jax_export

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


# ---------------------------------------------------------------------------------------------
# Traced programs kept on disk.

STORED_PROGRAMS_SUBDIR = "lowered"
STORED_PROGRAMS_KEEP = 8  # per program name: the newest ones (1-2 MB each at the paper size)
# jax.config values that change what a program compiles to or where it is cached, never what
# tracing produces: left out of a stored program's key.
_KEY_IGNORED_CONFIG = re.compile(
    r"^jax_(compilation_cache|persistent_cache|explain_cache|log_compiles|logging_level|"
    r"raise_persistent_cache|disable_most_optimizations|pprint|debug_log_modules|dump_ir|"
    r"share_binary|cross_host|cpu_get_.*_timeout|distributed_debug|compiler_detailed_logging|"
    r"include_debug_info_in_dumps|traceback_filtering|check_proxy_envs)")


@functools.lru_cache(maxsize=None)
def source_digest() -> str:
  """sha256 of every .py file of the mopoe_jax package (paths and contents)."""
  root = os.path.dirname(os.path.abspath(__file__))
  digest = hashlib.sha256()
  for directory, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(f for f in files if f.endswith(".py")):
      path = os.path.join(directory, name)
      digest.update(os.path.relpath(path, root).encode())
      with open(path, "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()


def _version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "none"


def program_key(*parts) -> str:
  """A digest of ``parts`` (their ``repr``, object addresses removed) and of everything else that
  decides what tracing a program produces: this package's source, the versions of jax, jaxlib,
  flax, optax and numpy, Python, the backend and its devices, and the jax.config values."""
  config = sorted((k, repr(v)) for k, v in jax.config.values.items()
                  if not _KEY_IGNORED_CONFIG.match(k))
  devices = [(d.id, d.process_index, d.platform, d.device_kind) for d in jax.devices()]
  text = repr((parts, source_digest(), [_version(p) for p in ("jax", "jaxlib", "flax", "optax",
                                                               "numpy")],
               platform.python_version(), jax.default_backend(), devices, config))
  text = re.sub(r" at 0x[0-9a-fA-F]+", "", text)
  return hashlib.sha256(text.encode()).hexdigest()[:32]


def stored_programs_dir(enabled: bool = True) -> str | None:
  """``<compilation cache>/lowered``, or None when ``enabled`` is False or JAX's persistent
  compilation cache is off (no directory set)."""
  cache = jax.config.jax_compilation_cache_dir
  return os.path.join(cache, STORED_PROGRAMS_SUBDIR) if enabled and cache else None


def _avals(args) -> list:
  return [(tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(args)]


class StoredProgram:
  """A jitted program whose traced and lowered form (``jax.export``) is kept on disk.

  ``fun`` must take and return lists, tuples, dicts and arrays only (no custom pytree nodes: the
  stored form keeps only those). The first `lower` in a process loads ``<directory>/<name>-<key>
  .jaxexport`` when it exists and fits the arguments; otherwise it traces and lowers ``fun``
  (``jax.export``) and stores the result there (keeping the newest `STORED_PROGRAMS_KEEP` files
  of that name). Either way the program that compiles is the stored one,
  ``jax.jit(exported.call, **jit_kwargs)`` (shardings, donation; named ``name`` in compile logs
  and cache entries), so a first start and a restart compile the same program (the persistent
  cache then hits) and compute the same numbers, bit for bit. ``key`` (`program_key`) must name
  everything the trace depends on; a stale key means a stale program. With ``directory`` None
  nothing is read or written. `lower` and `__call__` behave as those of a ``jax.jit`` object;
  several `lower` calls in one process trace and load nothing again.
  """

  def __init__(self, fun, *, name: str, key: str, directory: str | None, **jit_kwargs):
    self.name, self.fun = name, fun
    self.path = (os.path.join(directory, f"{name}-{key}.jaxexport") if directory else None)
    self._jit_kwargs = jit_kwargs  # in_shardings, out_shardings, donate_argnums
    self._jitted = None
    self._lock = threading.Lock()
    self.loaded = False  # True: the program came from the file, nothing was traced

  def _load(self, args):
    if self.path is None or not os.path.exists(self.path):
      return None
    try:
      with open(self.path, "rb") as f:
        exported = jax_export.deserialize(bytearray(f.read()))
      wanted = _avals(args)
      found = [(tuple(a.shape), str(a.dtype)) for a in exported.in_avals]
      if found != wanted:
        raise ValueError(f"it takes {len(found)} arguments of other shapes")
    except Exception as e:  # pylint: disable=broad-exception-caught
      logging.warning("Cannot use the stored %s in %s (%s: %s); tracing it again.", self.name,
                      self.path, type(e).__name__, e)
      return None
    return exported

  def _store(self, blob: bytes) -> None:
    directory = os.path.dirname(self.path)
    tmp = f"{self.path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
      os.makedirs(directory, exist_ok=True)
      with open(tmp, "wb") as f:
        f.write(blob)
      os.replace(tmp, self.path)  # atomic: a reader sees the old file or the whole new one
    except OSError as e:
      logging.warning("Could not store the traced %s in %s (%s); the next start traces it "
                      "again.", self.name, self.path, e)
      if os.path.exists(tmp):
        os.remove(tmp)
      return
    # Every code or config change stores another program under a new key: keep the newest few.
    stored = []
    for entry in os.scandir(directory):
      if entry.name.startswith(f"{self.name}-") and entry.name.endswith(".jaxexport"):
        try:
          stored.append((entry.stat().st_mtime, entry.path))
        except OSError:  # removed meanwhile by another process
          pass
    for _, path in sorted(stored, reverse=True)[STORED_PROGRAMS_KEEP:]:
      try:
        os.remove(path)
      except OSError:
        pass

  def _build(self, args):
    tic = time.perf_counter()
    exported = self._load(args)
    if exported is not None:
      self.loaded = True
      logging.info("Loaded the traced %s from %s in %.1f s (no tracing).", self.name, self.path,
                   time.perf_counter() - tic)
    else:
      traced = jax_export.export(jax.jit(self.fun, **self._jit_kwargs))(*args)
      blob = traced.serialize()
      # The program that runs is the stored form in both cases: what a restart will load.
      exported = jax_export.deserialize(blob)
      if self.path is not None:
        self._store(bytes(blob))
        logging.info("Traced the %s in %.1f s; stored it in %s.", self.name,
                     time.perf_counter() - tic, self.path)

    def program(*args):
      return exported.call(*args)

    # Named as the program, not "call": compile logs, cache entries and monitoring events say
    # which program they are about.
    program.__name__ = program.__qualname__ = self.name
    return jax.jit(program, **self._jit_kwargs)

  def lower(self, *args):
    with self._lock:
      if self._jitted is None:
        self._jitted = self._build(args)
    return self._jitted.lower(*args)

  def __call__(self, *args):
    with self._lock:
      if self._jitted is None:
        self._jitted = self._build(args)
    return self._jitted(*args)
