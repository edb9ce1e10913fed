"""The platform and its settings: XLA:CPU flags, the persistent compilation cache, start-up on
several processes.

Everything here that was chosen by measuring XLA:CPU applies on the CPU backend only; GPU and
TPU runs get XLA's defaults. Compiled programs (one jitted object per program, fast compiles,
background compiles, traced programs kept on disk) are in `mopoe_jax.platform.compilation`.

- ``CPU_FLAGS``: on XLA:CPU (jaxlib 0.10), convolutions rewritten into individual YNNPACK calls
  made this model's paper-size training step slower than XLA's own convolution emitter: 2.23 vs
  1.83 s per step of 8 on 2 cores, measured interleaved
  (benchmarks/results/step_optimization.md, issue #6).
  ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` turns that one rewrite
  off. XLA reads XLA_FLAGS when a backend starts, before JAX can say which backend it will use,
  so `apply_defaults` decides from the environment (`planned_backend`).
- `enable_compilation_cache`: JAX's persistent compilation cache, so that a resumed or
  re-evaluated run loads the compiled step instead of compiling it again;
  `store_compiles_on_every_process`: every process of a multi-process CPU run stores its own
  entries there (JAX stores process 0's only, which on CPU no other process can load).
- `start_processes`: ``jax.distributed`` when the config or the environment (SLURM, Open MPI,
  Cloud TPU, JAX_COORDINATOR_ADDRESS) says the run is one of several processes.
"""

from __future__ import annotations

import ctypes.util
import importlib.metadata
import importlib.util
import inspect
import os

from absl import logging
import jax

from mopoe_jax.platform import paths

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
  plugins += [
    m
    for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin")
    if importlib.util.find_spec(m) is not None
  ]
  if any("cuda" in name for name in plugins):
    if nvidia_driver_present():
      return "cuda"
    # JAX would fail to start the plugin (an error, then the CPU): the plugin is only there to
    # compile for GPUs that are elsewhere (the test extra installs it everywhere).
    plugins = [name for name in plugins if "cuda" not in name]
  return "accelerator" if plugins else "cpu"


def nvidia_driver_present() -> bool:
  """Whether NVIDIA's driver is on this machine (its control device or libcuda), without which
  JAX's CUDA plugin cannot start."""
  return os.path.exists("/dev/nvidiactl") or ctypes.util.find_library("cuda") is not None


def _driverless_cuda_plugin(environ) -> bool:
  return (
    not environ.get("JAX_PLATFORMS", "").strip()
    and planned_backend(environ) == "cpu"
    and any(
      importlib.util.find_spec(m) is not None for m in ("jax_cuda12_plugin", "jax_cuda13_plugin")
    )
  )


def apply_defaults(environ=os.environ) -> str:
  """Appends CPU_FLAGS to XLA_FLAGS when the planned backend is the CPU.

  Call before the first JAX computation (backends read XLA_FLAGS when they start). A flag whose
  option the user already set is left as the user set it. Returns the resulting XLA_FLAGS. Set
  MOPOE_XLA_DEFAULTS=0 to leave XLA_FLAGS alone.
  """
  if _driverless_cuda_plugin(environ):
    # Without this JAX logs the plugin's failure to load CUDA as an error, with a traceback.
    logging.info(
      "JAX's CUDA plugin is installed but this machine has no NVIDIA driver: JAX_PLATFORMS=cpu."
    )
    environ["JAX_PLATFORMS"] = "cpu"
    if environ is os.environ:
      jax.config.update("jax_platforms", "cpu")
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
  directory = paths.makedirs(directory)  # a local folder or a URI (gs://...)
  jax.config.update("jax_compilation_cache_dir", directory)
  logging.info("JAX compilation cache: %s", directory)
  return directory


# The arguments of JAX's private `jax._src.compiler._cache_write` that
# `store_compiles_on_every_process` reads (jax 0.10.2 also passes host_callbacks; 0.12 does not).
_CACHE_WRITE_ARGS = ("cache_key", "compile_time_secs", "module_name", "backend", "executable")


def store_compiles_on_every_process() -> bool:
  """Makes every process store the programs it compiles on the CPU backend in JAX's persistent
  compilation cache, as process 0 does; True when in place, False when this JAX's internals are
  not those it was written for (checked with jax 0.10.2 and 0.12.0.1; nothing is changed then).

  JAX writes cache entries from process 0 only, so that the others load process 0's entries
  under the same keys. On CPU they never can: a key hashes the topology of the program's
  devices, and XLA:CPU's topology lists only this process's own devices (process index, local
  id) and this host's CPU features, so every process has keys of its own, and every process but
  0 compiled every program on every start. Here a CPU process other than 0 stores its compiles
  under its own keys, with JAX's own rules (``jax_persistent_cache_min_compile_time_secs``,
  errors), through JAX's own writer: no two processes write the same entry, and a key still
  names the host's CPU. Other backends keep JAX's rule (there the processes' keys are equal).
  Every process logs each program it loads from the cache, and each compile that missed it and
  took at least that minimum time (what a restart loads instead). Calling it again changes
  nothing.
  """
  try:
    # pylint: disable-next=g-import-not-at-top
    from jax._src import compilation_cache, compiler, distributed
  except ImportError:
    return False
  original = getattr(compiler, "_cache_write", None)
  if getattr(original, "stores_on_every_process", False):
    return True
  put = getattr(compilation_cache, "put_executable_and_time", None)
  should_raise = getattr(compiler, "_should_raise_persistent_cache_error", None)
  try:
    signature = inspect.signature(original)
    put_args = tuple(inspect.signature(put).parameters)
  except (TypeError, ValueError):
    return False
  if (
    not set(_CACHE_WRITE_ARGS) <= set(signature.parameters)
    or put_args[:4] != ("cache_key", "module_name", "executable", "backend")
    or not callable(should_raise)
    or not hasattr(getattr(distributed, "global_state", None), "process_id")
  ):
    return False

  def cache_write(*args, **kwargs):
    given = signature.bind(*args, **kwargs).arguments
    name, seconds, backend = given["module_name"], given["compile_time_secs"], given["backend"]
    minimum = jax.config.jax_persistent_cache_min_compile_time_secs
    if seconds >= minimum:
      logging.info(
        "Compiled %s in %.1f s (not in the persistent compilation cache).", name, seconds
      )
    if distributed.global_state.process_id == 0 or backend.platform != "cpu":
      return original(*args, **kwargs)
    if given.get("host_callbacks") or seconds < minimum:  # JAX's own rules (host callbacks: 0.10)
      return None
    try:
      put(given["cache_key"], name, given["executable"], backend, int(seconds))
    except Exception as e:  # pylint: disable=broad-exception-caught
      if should_raise(e):
        raise
      logging.warning("Could not store %s in the persistent compilation cache: %s", name, e)
    return None

  cache_write.stores_on_every_process = True
  compiler._cache_write = cache_write  # pylint: disable=protected-access
  log_hit = getattr(compiler, "log_persistent_cache_hit", None)
  if callable(log_hit):  # JAX logs hits at DEBUG level (WARNING with jax_log_compiles)

    def log_persistent_cache_hit(module_name, *args, **kwargs):
      logging.info("Loaded %s from the persistent compilation cache.", module_name)
      return log_hit(module_name, *args, **kwargs)

    compiler.log_persistent_cache_hit = log_persistent_cache_hit
  return True


_SLURM = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
_PROCESS_FIELDS = ("coordinator_address", "num_processes", "process_id")


def _count(value) -> int:
  try:
    return int(value)
  except (TypeError, ValueError):
    return 0


def _tpu_chips_present(pci="/sys/bus/pci/devices") -> bool:
  """True on a Cloud TPU VM: a PCI device of Google's vendor id, as JAX's own TPU check."""
  try:
    devices = os.listdir(pci)
  except OSError:
    return False
  for device in devices:
    try:
      with open(os.path.join(pci, device, "vendor")) as f:
        if f.read().strip() == "0x1ae0":
          return True
    except OSError:  # a device without a readable vendor file
      continue
  return False


def auto_on_off(value, field: str) -> str:
  """A field that is 'auto', true or false (and their spellings) as 'auto', 'on' or 'off'."""
  text = str(value).strip().lower()
  for setting, spellings in (
    ("auto", ("auto",)),
    ("on", ("true", "1", "yes", "on")),
    ("off", ("false", "0", "no", "off")),
  ):
    if text in spellings:
      return setting
  raise ValueError(f"config.{field} must be 'auto', true or false, got {value!r}.")


def multihost_setting(value) -> str:
  """``train.multihost`` as 'auto', 'on' or 'off' (True/False and their spellings accepted)."""
  return auto_on_off(value, "train.multihost")


def detect_processes(environ=os.environ, tpu_chips_present=_tpu_chips_present) -> str | None:
  """What in the environment says this process is one of several (a line for the log), or None.

  Checked in this order, as JAX's own detection (`jax.distributed.initialize` then finds the
  coordinator, the number of processes and this process's id in the same variables):
  JAX_COORDINATOR_ADDRESS; a SLURM step of more than one task (srun); an Open MPI job of more
  than one rank (mpirun); a Cloud TPU slice of more than one host (TPU_WORKER_HOSTNAMES or
  TPU_PROCESS_ADDRESSES on GKE, MEGASCALE_NUM_SLICES); any Cloud TPU VM, whose slice's hosts
  only its metadata server knows (JAX asks it; one host is a run of one process).
  """
  if environ.get("JAX_COORDINATOR_ADDRESS"):
    return f"JAX_COORDINATOR_ADDRESS={environ['JAX_COORDINATOR_ADDRESS']}"
  if all(k in environ for k in _SLURM) and _count(environ["SLURM_NTASKS"]) > 1:
    return (
      f"SLURM job {environ['SLURM_JOB_ID']}: task {environ['SLURM_PROCID']} of "
      f"{environ['SLURM_NTASKS']} on {environ['SLURM_STEP_NODELIST']}"
    )
  if "OMPI_MCA_orte_hnp_uri" in environ and _count(environ.get("OMPI_COMM_WORLD_SIZE")) > 1:
    return (
      f"Open MPI: rank {environ.get('OMPI_COMM_WORLD_RANK')} of {environ['OMPI_COMM_WORLD_SIZE']}"
    )
  hosts = environ.get("TPU_PROCESS_ADDRESSES") or environ.get("TPU_WORKER_HOSTNAMES") or ""
  # libtpu on a machine without TPUs fills TPU_WORKER_HOSTNAMES with a warning sentence.
  hosts = [h for h in hosts.split(",") if h.strip() and not any(c.isspace() for c in h.strip())]
  if len(hosts) > 1 or _count(environ.get("MEGASCALE_NUM_SLICES")) > 1:
    return (
      f"Cloud TPU: {len(hosts)} host(s) per slice, "
      f"{max(_count(environ.get('MEGASCALE_NUM_SLICES')), 1)} slice(s)"
    )
  if planned_backend(environ) == "tpu" and tpu_chips_present():
    return "Cloud TPU VM (JAX asks the TPU metadata server for the slice's hosts)"
  return None


def several_processes(train_config, environ=os.environ) -> str | None:
  """Why this run is one of several processes (a line for the log), or None for one process:
  ``train.multihost`` 'auto' (the default) decides by ``train.coordinator_address``,
  ``num_processes``, ``process_id`` when set, else by `detect_processes`; true always (JAX must
  then find what the config leaves unset); false never."""
  setting = multihost_setting(train_config.multihost)
  given = [f"train.{k}" for k in _PROCESS_FIELDS if train_config.get(k) is not None]
  if setting == "off":
    return None
  if setting == "on":
    return "config.train.multihost=true"
  if given:
    return "config." + ", config.".join(given)
  return detect_processes(environ)


def start_processes(train_config, environ=os.environ) -> bool:
  """Starts ``jax.distributed`` when this run is one of several processes (`several_processes`);
  True if it did. Logs what decided. Call before any other JAX call."""
  reason = several_processes(train_config, environ)
  if reason is None:
    if multihost_setting(train_config.multihost) == "off":
      logging.info("One process (config.train.multihost=false).")
    else:
      logging.info(
        "One process: nothing in the environment names several (set "
        "--config.train.multihost=true to start jax.distributed anyway)."
      )
    return False
  logging.info("Several processes (%s): starting jax.distributed.", reason)
  initialize_distributed(train_config)
  return True


def initialize_distributed(train_config) -> None:
  """``jax.distributed.initialize`` for a run on several processes (`start_processes`).

  ``train.coordinator_address`` ('host:port' of process 0), ``train.num_processes`` and
  ``train.process_id`` are passed when set; a field left None is found by JAX
  (JAX_COORDINATOR_ADDRESS, or the SLURM, Open MPI and Cloud TPU environments). On CPU the
  processes' collectives run over gloo (TCP), and each process stores its own compiles in the
  persistent compilation cache (`store_compiles_on_every_process`). Call before any other JAX
  call.
  """
  if planned_backend() == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {k: train_config.get(k) for k in _PROCESS_FIELDS}
  kwargs = {k: v for k, v in kwargs.items() if v is not None}
  try:
    jax.distributed.initialize(**kwargs)
  except (ValueError, TypeError) as e:
    raise ValueError(
      f"Cannot start JAX on several processes with {kwargs or 'nothing set'}: {e} Set "
      "--config.train.coordinator_address=HOST:PORT (process 0's address), "
      "--config.train.num_processes=N and --config.train.process_id=I (0 .. N-1, one per "
      "process), or run under SLURM, Open MPI or on Cloud TPU, where JAX finds them."
    ) from e
  logging.info(
    "JAX process %d of %d: %d local device(s), %d in all.",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  if jax.default_backend() != "cpu":
    return
  if store_compiles_on_every_process():
    logging.info(
      "Process %d stores the programs it compiles in the persistent compilation cache (on the "
      "CPU backend each process's cache keys name its own devices).",
      jax.process_index(),
    )
  elif jax.process_index() != 0:
    logging.warning(
      "Process %d on the CPU backend compiles every program on every start: JAX writes its "
      "persistent compilation cache from process 0 only, on CPU the other processes' cache "
      "keys differ from process 0's (they hash each process's own devices), and this JAX "
      "(%s) is not one whose cache writer mopoe_jax can extend to every process. The traced "
      "train step stored beside the cache (its lowered/ folder) is still shared.",
      jax.process_index(),
      jax.__version__,
    )
