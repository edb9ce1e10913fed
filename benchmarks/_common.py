"""Helpers shared by the benchmark scripts: machine facts, thread pinning, timing, memory.

Imports nothing heavy at module level: the step benchmark's parent process uses it without
JAX or PyTorch, its JAX worker without PyTorch, its PyTorch worker without JAX.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import threading
import time
from typing import Callable

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")

# /proc/cpuinfo flags worth recording: the vector extensions that decide the matmul speed.
CPU_EXTENSIONS = (
  "avx2",
  "fma",
  "avx512f",
  "avx512_vnni",
  "avx512_bf16",
  "avx512_fp16",
  "amx_tile",
  "amx_bf16",
  "amx_int8",
)


def load() -> float:
  """The 1-minute load average."""
  return os.getloadavg()[0]


def gpu_peak_bf16(device_kind: str | None) -> float | None:
  """Dense bf16 FLOP/s of a GPU by its name (JAX's device_kind or torch's device name), or None
  ('unknown') if not in the table (`mopoe_jax.platform.speed.PEAK_FLOPS`)."""
  from mopoe_jax.platform import speed  # pylint: disable=g-import-not-at-top

  return speed.peak_flops(device_kind or "")


def cpu_info() -> dict:
  """The CPU model, its vector extensions (from /proc/cpuinfo flags) and whether it has bf16."""
  model, flags = None, set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
          model = value.strip()
        elif key == "flags" and not flags:
          flags = set(value.split())
  except OSError:
    pass
  import platform

  return {
    "model": model or platform.processor() or platform.machine(),
    "extensions": [x for x in CPU_EXTENSIONS if x in flags],
    "native_bf16": bool(flags & {"avx512_bf16", "amx_bf16"}),
    "logical_cpus": os.cpu_count(),
    "available_cpus": len(os.sched_getaffinity(0)),
  }


def describe_cpu(info: dict) -> str:
  ext = ", ".join(info["extensions"]) or "no AVX2"
  bf16 = "native bf16" if info["native_bf16"] else "no native bf16"
  return f"{info['model']} ({ext}; {bf16}; {info['logical_cpus']} logical CPUs)"


def pin_cores(threads: int) -> list[int]:
  """Pins this process to its first ``threads`` allowed cores (call before JAX starts XLA:CPU,
  which sizes its intra-op pool from the affinity mask). With one thread, also turns off
  XLA:CPU's multi-threaded Eigen."""
  cpus = sorted(os.sched_getaffinity(0))
  if threads > len(cpus):
    raise ValueError(
      f"--threads {threads} but only {len(cpus)} cores are available: {cpus}. "
      "Pass a smaller --threads."
    )
  os.sched_setaffinity(0, cpus[:threads])
  if threads == 1:
    add_xla_flags("--xla_cpu_multi_thread_eigen=false")
  return cpus[:threads]


def add_xla_flags(flags: str) -> None:
  if flags:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()


def setup_jax_env(
  threads: int | None = None, xla_flags: str = "", xla_defaults: bool = True, cpu_only: bool = True
) -> list[int] | None:
  """What every JAX benchmark does before importing JAX: pin the cores, add --xla-flags and the
  flags main.py trains with (mopoe_jax.platform.runtime), keep JAX on the CPU unless told not to.

  Returns the pinned cores (None: not pinned).
  """
  cores = pin_cores(threads) if threads else None
  add_xla_flags(xla_flags)
  if cpu_only:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if xla_defaults:
    from mopoe_jax.platform import runtime  # pylint: disable=g-import-not-at-top

    runtime.apply_defaults()  # the XLA:CPU flags, when the backend is the CPU
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  return cores


def rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def max_rss_bytes() -> int:
  """This process's peak resident set size so far (ru_maxrss is in KiB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssPeak:
  """Samples the resident set size every ``interval`` seconds in a thread; ``peak`` in bytes."""

  def __init__(self, interval: float = 0.01):
    self.interval, self.peak, self._stop = interval, rss_bytes(), threading.Event()

  def __enter__(self):
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()
    return self

  def _run(self):
    while not self._stop.wait(self.interval):
      self.peak = max(self.peak, rss_bytes())

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, rss_bytes())


def summarize(times: list[float]) -> dict:
  """Median, quartiles, IQR, min and max of a list of seconds."""
  q = np.percentile(times, [25, 50, 75])
  return {
    "median": float(q[1]),
    "q25": float(q[0]),
    "q75": float(q[2]),
    "iqr": float(q[2] - q[0]),
    "min": float(min(times)),
    "max": float(max(times)),
    "n": len(times),
  }


def flops_from_cost_analysis(compiled) -> float | None:
  """XLA's FLOP count of a compiled program (a dict, or a list of dicts in older versions)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (some backends do not implement it)
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def bounded_matmul_peak(
  make_matmul: Callable[[int], Callable[[], None]],
  *,
  n_start: int,
  n_max: int,
  budget_s: float = 1.0,
  target_s: float = 0.05,
  max_reps: int = 10,
) -> dict:
  """The best FLOP/s of an n x n matmul, in a few ``budget_s`` seconds whatever the machine.

  ``make_matmul(n)`` returns a function that runs one n x n @ n x n product and waits for it.
  n doubles from ``n_start`` while one product takes less than ``target_s`` (up to ``n_max``,
  and while the search has taken less than 3 ``budget_s``); a machine where even the first n is
  slow (bf16 emulated on a CPU without bf16 units: ~0.1 s at n = 256) stops there. Then the
  product is repeated until ``budget_s`` is spent or ``max_reps`` runs.
  """
  start = time.perf_counter()
  n = n_start
  while True:
    run = make_matmul(n)
    run()  # compile / first call
    t = _timed(run)
    if t >= target_s or n >= n_max or time.perf_counter() - start > 3 * budget_s:
      break
    n *= 2
  best, reps, cpu_best = t, 1, None
  spent = time.perf_counter()
  while reps < max_reps and time.perf_counter() - spent < budget_s:
    c = time.process_time()
    t = _timed(run)
    if t <= best:
      best, cpu_best = t, time.process_time() - c
    reps += 1
  out = {
    "n": n,
    "flop_per_s": 2 * n**3 / best,
    "best_s": best,
    "reps": reps,
    "seconds": time.perf_counter() - start,
  }
  if cpu_best is not None:
    out["threads_busy"] = cpu_best / best
  return out


def _timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def signal_name(returncode: int | None) -> str | None:
  """'SIGSEGV' for a process killed by signal 11 (Popen.returncode -11), else None."""
  if returncode is None or returncode >= 0:
    return None
  try:
    return signal.Signals(-returncode).name
  except ValueError:
    return f"signal {-returncode}"


# ---------------------------------------------------------------------------------------------
# The step benchmark's worker side of its protocol: one JSON object per line. Commands come on
# stdin; replies go to a private copy of the original stdout, and file descriptor 1 is pointed
# at stderr so that whatever a library prints cannot corrupt the replies.


def die_with_parent() -> None:
  """Asks Linux to send this process SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG), so
  that a worker busy compiling does not outlive a killed benchmark. Elsewhere: nothing."""
  try:
    import ctypes  # pylint: disable=g-import-not-at-top

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
  except (OSError, AttributeError):
    return
  if os.getppid() == 1:  # the parent died before the request took effect
    sys.exit(1)


class WorkerChannel:
  """A worker's end of the parent's pipes."""

  def __init__(self):
    sys.stdout.flush()
    self._out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

  def send(self, **message) -> None:
    self._out.write(json.dumps(message) + "\n")
    self._out.flush()

  def receive(self) -> dict | None:
    line = sys.stdin.readline()
    return json.loads(line) if line else None


def serve(channel: WorkerChannel, handlers: dict) -> int:
  """Answers the parent's commands until 'finish' (exit status 0) or an error (1).

  Every reply is {"ok": true, ...the handler's dict} or {"ok": false, "error": traceback}.
  """
  import traceback  # pylint: disable=g-import-not-at-top

  while True:
    message = channel.receive()
    if message is None:  # the parent went away
      return 1
    command = message.pop("cmd")
    try:
      reply = handlers[command](**message)
    except Exception:  # pylint: disable=broad-except  (reported to the parent, then exit)
      channel.send(ok=False, error=traceback.format_exc())
      return 1
    channel.send(ok=True, **(reply or {}))
    if command == "finish":
      return 0


def maybe_simulate_crash(phase: str, crash_phase: str | None) -> None:
  """The hidden --simulate-crash option: dies by SIGSEGV at ``crash_phase``, as a crash in an
  extension module would (faulthandler, enabled in the workers, prints the Python stack)."""
  if crash_phase == phase:
    print(
      f"simulated crash (--simulate-crash): raising SIGSEGV in phase {phase!r}",
      file=sys.stderr,
      flush=True,
    )
    signal.raise_signal(signal.SIGSEGV)


PAD_ID = 1  # <pad> of the datasets' vocabularies (mopoe_jax.data.text.PAD_ID)


def make_data(
  image_size: int, text_length: int, batch_size: int, vocab: int, seed: int = 0
) -> dict:
  """Random uint8 images [B, S, S, 1], random tokens [B, T], every modality available."""
  rng = np.random.default_rng(seed)
  s, t = image_size, text_length
  return {
    "frontal": rng.integers(0, 256, (batch_size, s, s, 1), dtype=np.uint8),
    "lateral": rng.integers(0, 256, (batch_size, s, s, 1), dtype=np.uint8),
    "text": rng.integers(0, vocab, (batch_size, t), dtype=np.int32),
    "available": np.ones((batch_size, 3), bool),
  }


def get_config(size: str):
  """The ml_collections config of a benchmark size: paper, synthetic or tiny."""
  from configs import default, synthetic, tiny  # pylint: disable=g-import-not-at-top

  return {"paper": default, "synthetic": synthetic, "tiny": tiny}[size].get_config()


def first_learning_rate(config) -> float:
  """The first learning rate of the JAX warm-up: both frameworks step at it while timed."""
  t = config.train
  return t.learning_rate / t.warmup_steps if t.warmup_steps else t.learning_rate
