"""Compiled programs: one jitted object per program, fast and background compiles, traced
programs kept on disk.

- ``FAST_COMPILE_OPTIONS``: programs that run a handful of times (init, eval, image grids)
  compile in seconds instead of minutes on CPU at LLVM optimization level 1 without the
  expensive passes (`compile_fast`). Level 1 compiles as fast as level 0 and runs much faster:
  the paper-size init compiled in 20.4 s at either level, then ran in 0.9 s instead of 11.0 s
  (its random numbers for 59 M parameters; default options: 59.1 s to compile).
- `jitted_once`: the same ``jax.jit`` object for the same program within one process, so a
  second run in that process (a notebook, train then resume, the tests) neither traces, lowers
  nor compiles again.
- `BackgroundCompile`: a program compiling in a thread while the caller does other work.
- `StoredProgram`: a traced and lowered program kept on disk beside the compilation cache
  (``jax.export``), so that a restart neither traces nor lowers it: the paper-size step takes
  9-15 s of Python to trace and lower on any machine, which the persistent cache alone does not
  save.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import re
import threading
import time

from absl import logging
from etils import epath
import jax
from jax import export as jax_export

from mopoe_jax.platform import paths

# XLA:CPU options for programs that run a handful of times (init, eval, image grids).
FAST_COMPILE_OPTIONS = {
  "xla_backend_optimization_level": 1,
  "xla_llvm_disable_expensive_passes": True,
}


_JITTED: dict = {}
# A process keeps the newest 64 programs: a run has about ten (loop, evaluators, inference at
# its batch sizes); the test suite, which makes many in one process, must not evict the loop's.
_JITTED_MAX = 64
_JITTED_LOCK = threading.Lock()


def jitted_once(key, make):
  """``make()`` (a ``jax.jit`` object) the first time ``key`` is seen in this process, the same
  object after that.

  JAX keeps a jitted object's traced, lowered and compiled programs (ahead-of-time
  ``lower().compile()`` included) for as long as the object lives; a fresh ``jax.jit`` of a fresh
  ``functools.partial`` starts from nothing each time. ``key`` must fix the program: the
  function and everything static it closes over (a Flax module and a frozen dataclass hash by
  their fields, a mesh by its devices). The newest `_JITTED_MAX` are kept.
  """
  with _JITTED_LOCK:
    jitted = _JITTED.pop(key, None)
    if jitted is None:
      jitted = make()
    _JITTED[key] = jitted  # newest last
    while len(_JITTED) > _JITTED_MAX:
      _JITTED.pop(next(iter(_JITTED)))
    return jitted


def compile_fast(jitted, *example_args, runs_once: bool = False):
  """Compiles ``jitted`` for ``example_args`` (arrays or shape structs); on the CPU backend with
  FAST_COMPILE_OPTIONS, elsewhere with the backend's defaults.

  ``runs_once`` (the train state's init): where ``jax_disable_most_optimizations`` is on (as in
  the tests), with that flag's own options, XLA's level 0, like every program compiled without
  options then. The tiny init compiles in 10.8 CPU-s instead of 19.1 at level 1 (2-core AMD
  EPYC, jax 0.10.2; its 695 fusions are each parameter's random numbers); its values differ
  from level 1's in the last bits, as the flag's train step differs from the default's. The
  evaluation's programs keep level 1 under the flag: their split and replicated forms agree bit
  for bit there, not at level 0 (tests/test_sharded_optimizer.py).
  """
  options = FAST_COMPILE_OPTIONS if jax.default_backend() == "cpu" else None
  if runs_once and jax.config.read("jax_disable_most_optimizations"):
    options = None
  return jitted.lower(*example_args).compile(compiler_options=options)


def compile_timed(jitted, *example_args, name: str):
  """Lowers and compiles ``jitted`` ahead of time and logs how long each part took."""
  tic = time.perf_counter()
  lowered = jitted.lower(*example_args)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  done = time.perf_counter()
  logging.info(
    "Compiled the %s: lowering %.1f s, compiling %.1f s (or loading it, when the persistent "
    "cache holds it: misses are logged as such; on CPU a load takes seconds too).",
    name,
    lowered_at - tic,
    done - lowered_at,
  )
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
    self._thread = threading.Thread(
      target=self._run, args=(jitted, example_args), name=f"compile {name}", daemon=True
    )
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
    logging.info(
      "The %s was ready %.1f s after its compile started (waited %.1f s for it).",
      self.name,
      time.perf_counter() - self._started,
      time.perf_counter() - tic,
    )
    return self._result


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
  r"include_debug_info_in_dumps|traceback_filtering|check_proxy_envs|"
  # Set per process by jax.distributed (each process's local devices on GPUs): the same
  # program on every process.
  r"[a-z]+_visible_devices)"
)


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
  config = sorted(
    (k, repr(v)) for k, v in jax.config.values.items() if not _KEY_IGNORED_CONFIG.match(k)
  )
  devices = [(d.id, d.process_index, d.platform, d.device_kind) for d in jax.devices()]
  text = repr(
    (
      parts,
      source_digest(),
      [_version(p) for p in ("jax", "jaxlib", "flax", "optax", "numpy")],
      platform.python_version(),
      jax.default_backend(),
      devices,
      config,
    )
  )
  text = re.sub(r" at 0x[0-9a-fA-F]+", "", text)
  return hashlib.sha256(text.encode()).hexdigest()[:32]


def layout_key(mesh, *args) -> tuple:
  """The part of a program's key (`program_key`) that its arguments and devices make: the
  arguments' tree structure, each leaf's shape, dtype and sharding (arrays or shape structs), and
  ``mesh``'s devices with their kind (compile-only devices of two GPU or TPU kinds have the same
  ids)."""
  return (
    str(jax.tree.structure(args)),
    [(x.shape, str(x.dtype), str(x.sharding)) for x in jax.tree.leaves(args)],
    [(d.id, d.device_kind) for d in mesh.devices.flat],
  )


def stored_programs_dir(enabled: bool = True) -> str | None:
  """``<compilation cache>/lowered``, or None when ``enabled`` is False or JAX's persistent
  compilation cache is off (no directory set)."""
  cache = jax.config.jax_compilation_cache_dir
  return paths.join(cache, STORED_PROGRAMS_SUBDIR) if enabled and cache else None


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
    self.path = paths.join(directory, f"{name}-{key}.jaxexport") if directory else None
    self._jit_kwargs = jit_kwargs  # in_shardings, out_shardings, donate_argnums
    self._jitted = None
    self._lock = threading.Lock()
    self.loaded = False  # True: the program came from the file, nothing was traced

  def _load(self, args):
    if self.path is None or not paths.exists(self.path):
      return None
    try:
      exported = jax_export.deserialize(bytearray(paths.read_bytes(self.path)))
      wanted = _avals(args)
      found = [(tuple(a.shape), str(a.dtype)) for a in exported.in_avals]
      if found != wanted:
        raise ValueError(f"it takes {len(found)} arguments of other shapes")
    except Exception as e:  # pylint: disable=broad-exception-caught
      logging.warning(
        "Cannot use the stored %s in %s (%s: %s); tracing it again.",
        self.name,
        self.path,
        type(e).__name__,
        e,
      )
      return None
    return exported

  def _store(self, blob: bytes) -> None:
    try:
      # Atomic where local: a reader sees the old file or the whole new one.
      paths.write_bytes(self.path, blob)
    except OSError as e:
      logging.warning(
        "Could not store the traced %s in %s (%s); the next start traces it again.",
        self.name,
        self.path,
        e,
      )
      return
    # Every code or config change stores another program under a new key: keep the newest few.
    stored = []
    for entry in epath.Path(self.path).parent.glob(f"{self.name}-*.jaxexport"):
      try:
        stored.append((entry.stat().mtime, entry))
      except OSError:  # removed meanwhile by another process
        pass
    for _, path in sorted(stored, key=lambda x: x[0], reverse=True)[STORED_PROGRAMS_KEEP:]:
      try:
        path.unlink()
      except OSError:
        pass

  def _build(self, args):
    tic = time.perf_counter()
    exported = self._load(args)
    if exported is not None:
      self.loaded = True
      logging.info(
        "Loaded the traced %s from %s in %.1f s (no tracing).",
        self.name,
        self.path,
        time.perf_counter() - tic,
      )
    else:
      traced = jax_export.export(jax.jit(self.fun, **self._jit_kwargs))(*args)
      blob = traced.serialize()
      # The program that runs is the stored form in both cases: what a restart will load.
      exported = jax_export.deserialize(blob)
      if self.path is not None:
        self._store(bytes(blob))
        logging.info(
          "Traced the %s in %.1f s; stored it in %s.",
          self.name,
          time.perf_counter() - tic,
          self.path,
        )

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
