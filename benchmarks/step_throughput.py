"""Training-step throughput of the JAX model against the PyTorch baseline, same shapes.

  python benchmarks/step_throughput.py                          # CPU: the default sweep
  python benchmarks/step_throughput.py --sizes paper --batch 8,32 --threads 2
  python benchmarks/step_throughput.py --sizes synthetic --skip-torch
  python benchmarks/step_throughput.py --sizes paper --batch 200  # on a GPU (benchmarks/README.md)

JAX and PyTorch each run in a worker process of their own (this file with ``--worker jax`` or
``--worker torch``, see step_worker_jax.py and step_worker_torch.py): the two frameworks never
share a process, so neither can take the other down (issue #14: a segfault when torch loaded
an extension module after JAX had compiled). The parent imports neither.

Protocol: the parent writes one JSON command per line to a worker's stdin (``build``, ``peak``,
``steps``, ``report``, ``finish``); the worker answers each with one JSON line on its stdout
(``{"ok": true, ...}`` or ``{"ok": false, "error": traceback}``), and sends a ``hello`` with its
versions and device when it has started. Everything else a worker prints goes to its stderr,
of which the parent keeps the tail. A worker that dies (a signal, an exit, no reply within
--timeout) is reported with its framework, phase, exit status or signal and stderr tail; the
other workers go on and their results are written; the exit status is then 1.

For each size the parent starts one worker per variant (a JAX compute dtype x conv_impl, a
PyTorch mode), which serves every batch of that size in ascending order. For each batch
("case") each worker builds and compiles (JAX: init, lower, compile, first steps; PyTorch:
build, first steps, FLOP count); then the parent interleaves the timed steps in --rounds rounds
(JAX steps, then torch steps, then JAX again, ...) so that all see the same machine load, and
collects: median, IQR and min-max of the step time (wall and process CPU time), examples/s,
peak memory (the worker's RSS on a CPU; on a GPU ``peak_bytes_in_use`` of JAX's device and
``torch.cuda.max_memory_allocated``), FLOPs per step (XLA's cost analysis; torch's FLOP
counter), achieved FLOP/s and its fraction of a matmul peak measured on the same device (and,
on a GPU, of the device's dense bf16 peak: the MFU), and the JAX / PyTorch ratio. The matmul
peak is measured once, in the first case's workers, capped at about --peak-budget seconds per
dtype; torch bf16 is skipped on a CPU without native bf16.

Device: --device auto asks a probe process for ``jax.default_backend()``; on a GPU, PyTorch
uses CUDA when ``torch.cuda.is_available()``. On a CPU the workers are pinned to --threads cores
(``sched_setaffinity``, which sizes XLA:CPU's pool; ``torch.set_num_threads``) and torch's
OpenMP runs with OMP_WAIT_POLICY=PASSIVE (its default spin-waiting slowed the baseline 10-20x
on a shared 2-core machine). XLA:CPU gets the flags main.py trains with (mopoe_jax.runtime;
--no-xla-defaults leaves them out) plus --xla-flags. Both frameworks step at the first learning
rate of the JAX warm-up so that neither diverges while timed; torch flushes denormals on a CPU
as XLA:CPU does.

Writes benchmarks/results/step_throughput.json and .md (on a GPU step_throughput_gpu.*; --out).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import queue
import resource
import statistics
import subprocess
import sys
import threading
import time

if __package__ in (None, ""):
  # Run as a file: the repository root must come first, so that the packages of this checkout
  # are imported rather than an installed copy.
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks import _common  # noqa: E402

SIZES = ("paper", "synthetic", "tiny")
CPU_BATCHES = {"paper": (8, 32, 64), "synthetic": (64,), "tiny": (8,)}
GPU_BATCH = 200  # the paper's
VOCAB = {"paper": 2900, "synthetic": 2900, "tiny": 64}
DEFAULTS = {  # per device: JAX compute dtypes, JAX conv_impl values, torch modes
    "cpu": {"compute_dtype": "float32", "conv_impl": "", "torch_modes": "f32"},
    "gpu": {"compute_dtype": "float32,bfloat16", "conv_impl": "xla,cpu",
            "torch_modes": "amp,f32"},
}
MAX_AUTO_STEPS = {"cpu": 12, "gpu": 50}
STARTUP_TIMEOUT_S = 300


def _list(text: str) -> list[str]:
  return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="paper,synthetic",
                      help="comma list: paper (configs/default.py), synthetic, tiny")
  parser.add_argument("--batch", default=None,
                      help="comma list of batch sizes for every size (default on a CPU: paper "
                      "8,32,64, synthetic 64, tiny 8; on a GPU: 200)")
  parser.add_argument("--steps", type=int, default=None,
                      help="timed steps per variant (default: about --step-seconds of steps, "
                      "at least --rounds, at most 12 on a CPU, 50 on a GPU)")
  parser.add_argument("--step-seconds", type=float, default=10.0,
                      help="target timed seconds per variant when --steps is not given")
  parser.add_argument("--rounds", type=int, default=3,
                      help="the timed steps are split into this many alternating rounds")
  parser.add_argument("--warmup", type=int, default=2,
                      help="untimed steps after the build (fewer once --warmup-seconds)")
  parser.add_argument("--warmup-seconds", type=float, default=5.0,
                      help="no further warm-up step once the warm-up steps took this long")
  parser.add_argument("--threads", type=int, default=2,
                      help="cores for each framework on a CPU (0: do not pin)")
  parser.add_argument("--vocab", type=int, default=None,
                      help="vocabulary size (default: 2900; tiny: 64)")
  parser.add_argument("--compute-dtype", default=None,
                      help="comma list of config.model.compute_dtype for JAX: float32, "
                      "bfloat16, auto (default: float32 on a CPU, float32,bfloat16 on a GPU)")
  parser.add_argument("--conv-impl", default=None,
                      help="comma list of config.model.conv_impl for JAX: auto, xla, cpu "
                      "(default: the config's on a CPU, xla,cpu on a GPU); ignored with a "
                      "note when the config has no conv_impl")
  parser.add_argument("--torch-modes", default=None,
                      help="comma list: f32 (plain), amp (channels_last + autocast bf16) "
                      "(default: f32 on a CPU, amp,f32 on a GPU)")
  parser.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"),
                      help="auto: GPU if jax.default_backend() is one (torch then uses CUDA "
                      "if it has it)")
  parser.add_argument("--parallel-build", default="auto", choices=("auto", "yes", "no"),
                      help="build and compile the JAX variants of a case at once (auto: on a "
                      "GPU, where the host has the cores; compile times then overlap)")
  parser.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS")
  parser.add_argument("--no-xla-defaults", action="store_true",
                      help="do not add mopoe_jax.runtime's CPU flags (main.py adds them)")
  parser.add_argument("--omp-wait-policy", default="PASSIVE", choices=("PASSIVE", "ACTIVE", ""),
                      help="OMP_WAIT_POLICY for torch's OpenMP ('' leaves it unset). With the "
                      "default spinning, torch slows 10-20x when other processes share the cores")
  parser.add_argument("--skip-torch", action="store_true")
  parser.add_argument("--no-peak", action="store_true", help="skip the matmul peak measurement")
  parser.add_argument("--peak-budget", type=float, default=1.0,
                      help="seconds of timed matmuls per framework and dtype")
  parser.add_argument("--timeout", type=float, default=1200.0,
                      help="seconds to wait for any one reply of a worker before killing it")
  parser.add_argument("--show-worker-log", action="store_true",
                      help="echo the workers' stderr (else only its tail on a failure)")
  parser.add_argument("--out", default=None,
                      help="output path without extension (.json and .md are written; default "
                      "benchmarks/results/step_throughput, on a GPU step_throughput_gpu)")
  # Internal: the workers, and a debugging aid that makes one framework's workers crash.
  parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
  parser.add_argument("--pin-threads", type=int, default=None, help=argparse.SUPPRESS)
  parser.add_argument("--simulate-crash", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    return args
  args.sizes = _list(args.sizes)
  unknown = [s for s in args.sizes if s not in SIZES]
  if unknown or not args.sizes:
    parser.error(f"--sizes {args.sizes}: choose from {SIZES}")
  if args.batch is not None:
    try:
      args.batch = [int(b) for b in _list(args.batch)]
    except ValueError:
      parser.error(f"--batch {args.batch!r}: a comma list of integers, e.g. 8,32,64")
  if args.rounds < 1 or (args.steps is not None and args.steps < args.rounds):
    parser.error(f"--steps {args.steps} must be at least --rounds {args.rounds} (>= 1)")
  if args.simulate_crash:
    framework, _, phase = args.simulate_crash.partition(":")
    phase = phase or "steps"
    if framework not in ("jax", "torch") or phase not in ("startup", "build", "steps"):
      parser.error("--simulate-crash FRAMEWORK[:PHASE], FRAMEWORK jax|torch, PHASE "
                   "startup|build|steps")
    args.simulate_crash = (framework, phase)
  return args


# ---------------------------------------------------------------------------------------------
# The parent's side of a worker.


@dataclasses.dataclass
class Variant:
  """What one worker runs: a framework and its build options."""
  framework: str          # 'jax' | 'torch'
  name: str               # e.g. 'jax float32', 'jax bfloat16 conv cpu', 'torch amp'
  options: dict           # build options: compute_dtype / conv_impl, or mode


class WorkerFailed(Exception):
  """A worker died, timed out or reported an error; ``report`` says which, where and why."""

  def __init__(self, report: dict):
    super().__init__(report["summary"])
    self.report = report


class Worker:
  """One worker process: JSON commands to its stdin, JSON replies from its stdout."""

  def __init__(self, variant: Variant, argv: list[str], env: dict, echo: bool):
    self.variant, self.name, self.framework = variant, variant.name, variant.framework
    self.echo, self.hello, self.builds = echo, None, 0
    self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, env=env, text=True, bufsize=1,
                                 cwd=_common.REPO_ROOT)
    self.replies = queue.Queue()
    self.stderr_tail = collections.deque(maxlen=40)
    self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                     threading.Thread(target=self._read_stderr, daemon=True)]
    for thread in self._readers:
      thread.start()

  def _read_stdout(self):
    for line in self.proc.stdout:
      try:
        self.replies.put(json.loads(line))
      except json.JSONDecodeError:
        self.stderr_tail.append("(stdout) " + line.rstrip())
    self.replies.put(None)

  def _read_stderr(self):
    for line in self.proc.stderr:
      self.stderr_tail.append(line.rstrip())
      if self.echo:
        print(f"    [{self.name}] {line.rstrip()}", file=sys.stderr, flush=True)

  def send(self, phase: str, **command) -> None:
    try:
      self.proc.stdin.write(json.dumps(command) + "\n")
      self.proc.stdin.flush()
    except OSError as e:  # BrokenPipeError: the worker is gone
      raise self._failed(phase, f"could not send {command.get('cmd')!r}: {e}") from None

  def reply(self, phase: str, timeout: float) -> dict:
    try:
      message = self.replies.get(timeout=timeout)
    except queue.Empty:
      self.proc.kill()
      raise self._failed(phase, f"no reply within {timeout:.0f} s; killed") from None
    if message is None:
      raise self._failed(phase, "the worker exited without replying")
    if not message.get("ok"):
      raise self._failed(phase, message.get("error") or "the worker reported an error")
    return message

  def request(self, phase: str, timeout: float, **command) -> dict:
    self.send(phase, cmd=phase, **command)
    return self.reply(phase, timeout)

  def close(self) -> None:
    try:
      self.proc.stdin.close()
      self.proc.wait(timeout=60)
    except (OSError, subprocess.TimeoutExpired):
      self.proc.kill()
      self.proc.wait()

  def _failed(self, phase: str, error: str) -> WorkerFailed:
    try:
      returncode = self.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      returncode = self.proc.wait()
    for thread in self._readers:
      thread.join(timeout=5)
    sig = _common.signal_name(returncode)
    status = f"killed by {sig}" if sig else f"exit status {returncode}"
    error_line = error.strip().splitlines()[-1] if error and error.strip() else ""
    return WorkerFailed({
        "framework": self.framework, "variant": self.name, "phase": phase,
        "returncode": returncode, "signal": sig, "error": error,
        "stderr_tail": list(self.stderr_tail),
        "summary": f"{self.name} worker failed in {phase}: {status}; {error_line}"})


# ---------------------------------------------------------------------------------------------
# The plan: device and variants.


def resolve_device(args) -> tuple[str, str]:
  """'cpu' or 'gpu', and how it was decided."""
  if args.device != "auto":
    return args.device, "--device"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  probe = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                         capture_output=True, text=True, env=env, timeout=STARTUP_TIMEOUT_S)
  if probe.returncode != 0:
    raise SystemExit(f"Could not ask JAX for its backend (exit {probe.returncode}):\n"
                     f"{probe.stderr[-2000:]}\nPass --device cpu or gpu.")
  backend = probe.stdout.split()[-1]
  return ("cpu" if backend == "cpu" else "gpu"), f"jax.default_backend() = {backend!r}"


def variants_for(args, device: str) -> tuple[list[Variant], str | None]:
  """The variants to run, and a note when --conv-impl had to be ignored."""
  defaults = DEFAULTS[device]
  dtypes = _list(args.compute_dtype if args.compute_dtype is not None
                 else defaults["compute_dtype"])
  impls = _list(args.conv_impl if args.conv_impl is not None else defaults["conv_impl"]) or [None]
  note = None
  if impls != [None] and "conv_impl" not in _common.get_config(args.sizes[0]).model:
    note = (f"config.model has no conv_impl in this checkout: conv_impl {impls} ignored "
            "(the config's convolutions run)")
    impls = [None]
  out = []
  for dtype in dtypes:
    for impl in impls:
      name = f"jax {dtype}" + (f" conv {impl}" if impl else "")
      out.append(Variant("jax", name, {"compute_dtype": dtype, "conv_impl": impl}))
  if not args.skip_torch:
    modes = _list(args.torch_modes if args.torch_modes is not None else defaults["torch_modes"])
    out += [Variant("torch", f"torch {mode}", {"mode": mode}) for mode in modes]
  return out, note


def worker_argv(args, framework: str, device: str) -> list[str]:
  argv = [sys.executable, os.path.abspath(__file__), "--worker", framework,
          "--device", args.device if framework == "jax" else device,
          f"--xla-flags={args.xla_flags}", f"--omp-wait-policy={args.omp_wait_policy}"]
  if args.no_xla_defaults or device != "cpu":  # runtime's flags are XLA:CPU options
    argv.append("--no-xla-defaults")
  if device == "cpu" and args.threads:
    argv += ["--pin-threads", str(args.threads)]
  if args.simulate_crash and args.simulate_crash[0] == framework:
    argv += ["--simulate-crash", args.simulate_crash[1]]
  return argv


# ---------------------------------------------------------------------------------------------
# One case: a size and a batch, every variant.


class Run:
  """The whole benchmark: the plan, the report, the workers of the current case."""

  def __init__(self, args, device: str, device_reason: str):
    self.args, self.device = args, device
    self.gpu = device == "gpu"
    self.variants, conv_impl_note = variants_for(args, device)
    self.parallel_build = (args.parallel_build == "yes" or
                           (args.parallel_build == "auto" and self.gpu))
    self.env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    self.disabled = {}   # framework -> why (it failed at startup)
    self.peak = None
    self.hellos = {}
    self.report = {"machine": None, "settings": None, "matmul_peak": None, "cases": [],
                   "failures": [], "notes": []}
    self.device_reason = device_reason
    if conv_impl_note:
      self.note(conv_impl_note)

  def note(self, text: str) -> None:
    print(f"note: {text}", flush=True)
    if text not in self.report["notes"]:
      self.report["notes"].append(text)

  def fail(self, failure: WorkerFailed, case: dict | None) -> None:
    r = failure.report
    print(f"\n!! {r['summary']}", flush=True)
    if r["error"] and "\n" in r["error"].strip():
      print("   error:\n      " + "\n      ".join(r["error"].strip().splitlines()[-12:]))
    if r["stderr_tail"]:
      print("   stderr tail:\n      " + "\n      ".join(r["stderr_tail"][-15:]), flush=True)
    entry = {k: v for k, v in r.items() if k != "summary"}
    entry["summary"] = r["summary"]
    if case is not None:
      entry.update(size=case["size"], batch=case["batch"])
      case.setdefault("failures", []).append(r["summary"])
    self.report["failures"].append(entry)

  # -- a case ------------------------------------------------------------------------------

  def run_size(self, size: str, batches: list[int], vocab: int) -> list[dict]:
    """Every batch of one size, with one worker per variant for all of them."""
    args = self.args
    config = _common.get_config(size)
    d, m = config.data, config.model
    print(f"\n== {size}: {d.image_size} px, {d.text_length} tokens, V {vocab}, latent "
          f"{m.latent_dim}; batches {', '.join(map(str, batches))} (load "
          f"{_common.load():.2f})", flush=True)
    cases = [{"size": size, "batch": batch, "image_size": d.image_size,
              "text_length": d.text_length, "vocab": vocab, "latent_dim": m.latent_dim,
              "variants": {}} for batch in batches]
    workers = self._start([v for v in self.variants if v.framework not in self.disabled],
                          cases[0])
    for case in cases:
      batch = case["batch"]
      case["load_start"] = _common.load()
      if case is not cases[0]:
        print(f"\n== {size}, batch {batch} (load {_common.load():.2f})", flush=True)
      workers = self._build(workers, case, size, batch, vocab)
      if self.peak is None and not args.no_peak and workers:
        self._measure_peak(workers, case)
      timed = self._time(workers, case, batch)
      for w in timed:
        try:
          final = w.request("report", args.timeout)
          res = case["variants"][w.name]
          res["losses_finite"] = final["losses_finite"]
          res["last_loss"] = final["last_loss"]
          res["memory"] = final["memory"]
          res["foreign_modules"] = sorted(set(w.hello["foreign_modules"]) |
                                          set(final["foreign_modules"]))
        except WorkerFailed as e:  # its timings stand; only the final checks are missing
          self.fail(e, case)
          timed.remove(w)
      workers = timed
      case["load_end"] = _common.load()
      self._summarize(case, batch)
      print_case(case, self.gpu)
    for w in workers:
      try:
        w.request("finish", args.timeout)
      except WorkerFailed as e:
        self.fail(e, cases[-1])
      w.close()
    return cases

  def _start(self, variants: list[Variant], case: dict) -> list[Worker]:
    """Starts the workers (all at once) and waits for their hello."""
    args = self.args
    workers = [Worker(v, worker_argv(args, v.framework, self.device), self.env,
                      args.show_worker_log) for v in variants]
    alive = []
    for w in workers:
      try:
        w.hello = w.reply("startup", STARTUP_TIMEOUT_S)
        self._check_hello(w)
        alive.append(w)
      except WorkerFailed as e:
        self.fail(e, case)
        self.disabled[w.framework] = e.report["summary"]
        self.note(f"{w.framework} is left out of the remaining runs: its worker failed at "
                  "startup")
    for w in alive:
      if w.framework in self.disabled:
        w.close()
    return [w for w in alive if w.framework not in self.disabled]

  def _check_hello(self, w: Worker) -> None:
    h = w.hello
    self.hellos.setdefault(w.framework, h)
    if h.get("foreign_modules"):
      self.note(f"the {w.framework} worker has imported {h['foreign_modules']}")
    if w.framework == "jax" and h.get("disable_most_optimizations"):
      self.note("JAX ran with jax_disable_most_optimizations (JAX_DISABLE_MOST_OPTIMIZATIONS): "
                "a smoke run, its timings say nothing about speed")
    if w.framework == "jax" and (h["backend"] == "cpu") == self.gpu:
      self.note(f"JAX's backend is {h['backend']!r} but the plan was for a {self.device}")
    if w.framework == "torch" and self.gpu and not h["cuda_available"]:
      self.note("JAX runs on a GPU but this PyTorch has no CUDA: PyTorch runs on the CPU, so "
                "the ratio compares different devices")

  def _build(self, workers: list, case: dict, size: str, batch: int, vocab: int) -> list:
    args = self.args
    ok = []

    def command(w):
      common = dict(size=size, batch=batch, vocab=vocab, warmup=args.warmup,
                    warmup_seconds=args.warmup_seconds, **w.variant.options)
      if w.framework == "jax":
        return common
      device = "cuda" if self.gpu and w.hello["cuda_available"] else "cpu"
      return dict(common, device=device,
                  threads=args.threads if device == "cpu" and args.threads else None)

    jax_workers = [w for w in workers if w.framework == "jax"]
    if self.parallel_build and len(jax_workers) > 1:
      print(f"building {len(jax_workers)} JAX variants at once (--parallel-build)", flush=True)
      started = []
      for w in jax_workers:
        try:
          w.send("build", cmd="build", **command(w))
          started.append(w)
        except WorkerFailed as e:
          self.fail(e, case)
      pending = [(w, None) for w in started] + [(w, command(w)) for w in workers
                                                 if w.framework != "jax"]
    else:
      pending = [(w, command(w)) for w in workers]
    for w, cmd in pending:
      if cmd is not None:
        print(f"{w.name}: building (load {_common.load():.2f}) ...", flush=True)
      try:
        reply = (w.request("build", args.timeout, **cmd) if cmd is not None
                 else w.reply("build", args.timeout))
      except WorkerFailed as e:
        self.fail(e, case)
        continue
      res = {"framework": w.framework, "variant": w.name, "options": w.variant.options}
      if not w.builds:
        res["import_s"] = w.hello["import_s"]
      w.builds += 1
      res.update({k: v for k, v in reply.items() if k != "ok"})
      case["variants"][w.name] = res
      print(f"{w.name}: {describe_phases(res)} (load {reply['load']:.2f})", flush=True)
      ok.append(w)
    return ok

  def _measure_peak(self, workers: list, case: dict) -> None:
    self.peak = {}
    for framework in ("jax", "torch"):
      w = next((w for w in workers if w.framework == framework), None)
      if w is None:
        continue
      t = time.perf_counter()
      try:
        peak = w.request("peak", self.args.timeout, budget_s=self.args.peak_budget)
      except WorkerFailed as e:
        self.fail(e, case)
        workers.remove(w)
        case["variants"].pop(w.name, None)
        continue
      peak.pop("ok")
      peak["seconds"] = time.perf_counter() - t
      self.peak[framework] = peak
      print(f"matmul peak, {framework}: " + ", ".join(
          f"{k} {describe_peak(v)}" for k, v in peak.items() if k in ("f32", "bf16")) +
            f" ({peak['seconds']:.1f} s, load {peak['load']:.2f})", flush=True)
    measured = [self.peak[f] for f in ("jax", "torch") if f in self.peak]
    for dtype in ("f32", "bf16"):
      values = [p[dtype]["flop_per_s"] for p in measured if "flop_per_s" in p.get(dtype, {})]
      self.peak[dtype + "_peak"] = max(values) if values else None
    self.report["matmul_peak"] = self.peak

  def _time(self, workers: list, case: dict, batch: int) -> list:
    args = self.args
    warm = [case["variants"][w.name]["warmup_step_s"][-1] for w in workers
            if case["variants"][w.name]["warmup_step_s"]]
    max_steps = MAX_AUTO_STEPS[self.device]
    if args.steps:
      steps = args.steps
    elif warm:
      steps = int(min(max_steps, max(args.rounds, round(args.step_seconds / max(warm)))))
    else:
      steps = max_steps
    per_round = [steps // args.rounds + (r < steps % args.rounds) for r in range(args.rounds)]
    case["steps"], case["rounds"] = steps, args.rounds
    times = {w.name: {"wall": [], "cpu": [], "rss": 0} for w in workers}
    loads = []
    print(f"timing {steps} steps per variant in {args.rounds} rounds", flush=True)
    for r, n in enumerate(per_round):
      if n == 0:
        continue
      for w in list(workers):
        try:
          reply = w.request("steps", args.timeout, n=n)
        except WorkerFailed as e:
          self.fail(e, case)
          workers.remove(w)
          case["variants"].pop(w.name, None)
          continue
        loads += [reply["load_before"], reply["load_after"]]
        t = times[w.name]
        t["wall"] += reply["wall"]
        t["cpu"] += reply["cpu"]
        t["rss"] = max(t["rss"], reply["rss_peak_bytes"])
        print(f"  round {r + 1}/{args.rounds} {w.name:24s}: {n} steps, median "
              f"{_median(reply['wall']):.3f} s wall, {_median(reply['cpu']):.3f} s CPU "
              f"(load {reply['load_after']:.2f})", flush=True)
    case["load_during"] = ({"min": min(loads), "max": max(loads), "samples": loads} if loads
                           else None)
    for w in workers:
      res, t = case["variants"][w.name], times[w.name]
      wall, cpu = _common.summarize(t["wall"]), _common.summarize(t["cpu"])
      res.update(step_wall_s=wall, step_cpu_s=cpu, examples_per_s=batch / wall["median"],
                 examples_per_cpu_s=batch / cpu["median"],
                 threads_busy=cpu["median"] / wall["median"], steady_rss_bytes=t["rss"])
    return workers

  def _summarize(self, case: dict, batch: int) -> None:
    """FLOP rates, peak fractions, memory and the JAX / PyTorch ratios of a case."""
    timed = {k: v for k, v in case["variants"].items() if "step_wall_s" in v}
    torch_flops = next((v["model_flops_per_step"] for v in timed.values()
                        if v["framework"] == "torch"), None)
    xla_flops = next((v["xla_flops_per_step"] for v in timed.values()
                      if v["framework"] == "jax" and v.get("xla_flops_per_step")), None)
    model_flops = torch_flops or xla_flops
    case["model_flops_per_step"] = model_flops
    case["model_flops_source"] = ("torch.utils.flop_counter" if torch_flops else
                                  "XLA cost analysis" if xla_flops else None)
    if torch_flops and xla_flops:
      case["xla_flops_over_model_flops"] = xla_flops / torch_flops
    for v in timed.values():
      median = v["step_wall_s"]["median"]
      low_precision = v.get("compute_dtype") == "bfloat16" or v.get("mode") == "amp"
      v["peak_memory"] = peak_memory(v)
      if v["framework"] == "jax" and v.get("xla_flops_per_step"):
        v["xla_flop_per_s"] = v["xla_flops_per_step"] / median
      if model_flops:
        v["model_flop_per_s"] = model_flops / median
        peak = (self.peak or {}).get("bf16_peak" if low_precision else "f32_peak")
        if peak:
          v["fraction_of_measured_peak"] = v["model_flop_per_s"] / peak
          v["measured_peak_dtype"] = "bf16" if low_precision else "f32"
        if self.gpu:
          kind = self.hellos.get("jax", self.hellos.get("torch", {})).get("device_kind")
          nominal = _common.gpu_peak_bf16(kind)
          v["gpu_peak_bf16_flop_per_s"] = nominal
          v["mfu"] = v["model_flop_per_s"] / nominal if nominal else None
    best = {}
    for framework in ("jax", "torch"):
      candidates = [v for v in timed.values() if v["framework"] == framework]
      if candidates:
        best[framework] = max(candidates, key=lambda v: v["examples_per_s"])
    if "jax" in best:
      case["jax_examples_per_s"] = best["jax"]["examples_per_s"]
      case["jax_variant"] = best["jax"]["variant"]
    if "torch" in best:
      case["torch_examples_per_s"] = best["torch"]["examples_per_s"]
      case["torch_variant"] = best["torch"]["variant"]
    if len(best) == 2:
      j, t = best["jax"], best["torch"]
      case["ratio"] = j["examples_per_s"] / t["examples_per_s"]
      case["ratio_cpu_time"] = t["step_cpu_s"]["median"] / j["step_cpu_s"]["median"]
      case["ratios"] = {
          jv["variant"]: {tv["variant"]: jv["examples_per_s"] / tv["examples_per_s"]
                          for tv in timed.values() if tv["framework"] == "torch"}
          for jv in timed.values() if jv["framework"] == "jax"}


def peak_memory(v: dict) -> dict:
  """The variant's peak memory for its batch: the device's on a GPU, else the worker's RSS."""
  mem = v.get("memory") or {}
  if mem.get("device_peak_bytes") is not None:
    source = ("device.memory_stats()['peak_bytes_in_use'] (the worker's peak so far; batches "
              "run in ascending order)" if v["framework"] == "jax" else
              "torch.cuda.max_memory_allocated() since the build")
    return {"source": source, "bytes": mem["device_peak_bytes"]}
  return {"source": "worker RSS sampled every 10 ms from the build to the end of the timed "
                    "steps (JAX's includes compilation)",
          "bytes": mem.get("build_and_steps_peak_rss_bytes"),
          "steady_state_rss_bytes": v.get("steady_rss_bytes"),
          "process_peak_rss_bytes": mem.get("process_peak_rss_bytes")}


def _median(values: list[float]) -> float:
  return statistics.median(values)


def contention_note(report: dict) -> str | None:
  """A note when the timed steps on a CPU kept fewer cores busy than were pinned."""
  threads = report["settings"]["threads"]
  if report["settings"]["device"] != "cpu" or not threads:
    return None
  busy = [v["threads_busy"] for c in report["cases"] for v in c["variants"].values()
          if "threads_busy" in v]
  if not busy or _median(busy) >= 0.75 * threads:
    return None
  return (f"the timed steps kept a median of {_median(busy):.2f} of the {threads} pinned cores "
          "busy (process CPU time / wall time): other processes held the rest, or the steps "
          "are too small to fill them")


# ---------------------------------------------------------------------------------------------
# Printing and writing.


def describe_phases(res: dict) -> str:
  p = res["phases"]
  parts = [f"import {res['import_s']:.1f} s"] if "import_s" in res else []
  init = "init" if res.get("init_compiled", True) else "init (compiled before)"
  names = (("init_s", init), ("lower_s", "lower"), ("compile_s", "compile"),
           ("build_s", "build"), ("first_step_s", "first step"),
           ("next_warmup_steps_s", "next warm-up steps"), ("flop_count_s", "FLOP count"))
  parts += [f"{label} {p[key]:.1f} s" for key, label in names if key in p]
  flops = res.get("xla_flops_per_step") or res.get("model_flops_per_step")
  counter = "XLA" if res["framework"] == "jax" else "FLOP counter"
  text = f"{res['params']:,} parameters; " + ", ".join(parts)
  if flops:
    text += f"; {counter} {flops / 1e9:.1f} GFLOP/step"
  return text


def describe_peak(p: dict) -> str:
  if "skipped" in p:
    return f"skipped ({p['skipped']})"
  return f"{p['flop_per_s'] / 1e9:.0f} GFLOP/s (n {p['n']})"


def _load_range(load: dict | None) -> str:
  return f"{load['min']:.2f}-{load['max']:.2f}" if load else "-"


def _gib(n) -> str:
  return f"{n / 2 ** 30:.2f}" if n else "-"


def _fraction(v: dict, gpu: bool) -> str:
  parts = []
  if v.get("fraction_of_measured_peak"):
    parts.append(f"{v['fraction_of_measured_peak']:.1%}")
  if gpu:
    parts.append(f"MFU {v['mfu']:.1%}" if v.get("mfu") else "MFU unknown")
  return " / ".join(parts) or "-"


def variant_rows(case: dict, gpu: bool) -> list[tuple]:
  rows = []
  for v in case["variants"].values():
    if "step_wall_s" not in v:
      continue
    w, c = v["step_wall_s"], v["step_cpu_s"]
    prep = v["phases"].get("compile_s", v["phases"].get("build_s", 0.0))
    first = v["phases"].get("first_step_s")
    fps = v.get("model_flop_per_s")
    mem = v["peak_memory"]
    steady = mem.get("steady_state_rss_bytes")
    rows.append((v["variant"], f"{prep:.1f}", f"{first:.2f}" if first else "-",
                 f"{w['median']:.3f} ({w['iqr']:.3f})", f"{w['min']:.3f}-{w['max']:.3f}",
                 f"{c['median']:.3f}", f"{v['threads_busy']:.2f}",
                 f"{v['examples_per_s']:.2f}",
                 _gib(mem["bytes"]) + (f" ({_gib(steady)})" if steady else ""),
                 f"{fps / 1e9:.1f}" if fps else "-", _fraction(v, gpu)))
  return rows


VARIANT_HEADER = ("variant", "compile/build s", "first step s", "median s/step (IQR)",
                  "min-max s", "CPU s/step", "cores busy", "ex/s", "peak mem GiB",
                  "model GFLOP/s", "of peak")


def print_case(case: dict, gpu: bool) -> None:
  rows = [VARIANT_HEADER] + variant_rows(case, gpu)
  if len(rows) > 1:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
      print("  " + "  ".join(v.rjust(w) for v, w in zip(row, widths)))
  if case.get("model_flops_per_step"):
    print(f"  model: {case['model_flops_per_step'] / 1e9:.1f} GFLOP/step "
          f"({case['model_flops_source']})" +
          (f"; XLA counts {case['xla_flops_over_model_flops']:.2f}x that"
           if case.get("xla_flops_over_model_flops") else ""))
  if "ratio" in case:
    print(f"  JAX / PyTorch throughput: {case['ratio']:.2f}x wall ({case['jax_variant']} vs "
          f"{case['torch_variant']}), {case['ratio_cpu_time']:.2f}x by CPU time")
  if case.get("load_during"):
    print(f"  load during timing {case['load_during']['min']:.2f}-"
          f"{case['load_during']['max']:.2f}", flush=True)


def write_markdown(path: str, report: dict) -> None:
  mach, s = report["machine"], report["settings"]
  gpu = s["device"] == "gpu"
  title = "GPU" if gpu else "CPU"
  lines = [f"# Training-step throughput: JAX vs PyTorch ({title})", "",
           f"`{s['command']}`", "",
           f"- CPU: {_common.describe_cpu(mach['cpu'])}",
           f"- device: {s['device']} ({s['device_reason']})"
           + (f", {mach['device_kind']}" if mach.get("device_kind") else ""),
           "- versions: " + ", ".join(f"{k} {v}" for k, v in mach["versions"].items()),
           f"- cores used by each worker: {mach['cores'] or 'not pinned'}; XLA_FLAGS="
           f"`{mach.get('xla_flags') or ''}`; OMP_WAIT_POLICY={s['omp_wait_policy'] or 'unset'}",
           f"- load average {mach['load_start']:.2f} at start, {mach['load_end']:.2f} at end; "
           f"the whole run took {report['total_s'] / 60:.1f} min"
           + (f", its workers {report['workers_cpu_s'] / 60:.1f} CPU-min"
              if "workers_cpu_s" in report else ""), ""]
  peak = report.get("matmul_peak")
  if peak:
    parts = [f"{fw} {dtype} {describe_peak(peak[fw][dtype])}"
             for fw in ("jax", "torch") if fw in peak for dtype in ("f32", "bf16")]
    lines += ["Matmul peak (bounded, in the workers): " + "; ".join(parts) + ".", ""]
  lines += ["| size | batch | JAX examples/s | PyTorch examples/s | JAX / PyTorch (wall) | "
            "by CPU time | load |", "| --- | --- | --- | --- | --- | --- | --- |"]
  for c in report["cases"]:
    j, t = c.get("jax_examples_per_s"), c.get("torch_examples_per_s")
    load = c.get("load_during")
    lines.append(
        f"| {c['size']} | {c['batch']} | {f'{j:.2f}' if j else '-'} | "
        f"{f'{t:.2f}' if t else '-'} | " +
        (f"**{c['ratio']:.2f}x** | {c['ratio_cpu_time']:.2f}x" if "ratio" in c else "- | -") +
        f" | {_load_range(load)} |")
  lines += ["", "Per variant (compile/build: JAX lower + compile, PyTorch model build; peak "
            "memory: " + ("device peak" if gpu else "the worker's peak RSS (steady state during "
                          "the timed steps)") + "; of peak: model FLOP/s over the matmul peak "
            "of the same dtype" + (", MFU over the GPU's dense bf16 peak" if gpu else "") + "):",
            "", "| size | batch | " + " | ".join(VARIANT_HEADER) + " | load |",
            "| --- " * (len(VARIANT_HEADER) + 3) + "|"]
  for c in report["cases"]:
    load = c.get("load_during")
    for row in variant_rows(c, gpu):
      lines.append(f"| {c['size']} | {c['batch']} | " + " | ".join(row) +
                   f" | {_load_range(load)} |")
  lines += ["", "Start-up phases (s):", ""]
  for c in report["cases"]:
    for v in c["variants"].values():
      lines.append(f"- {c['size']} {c['batch']}, {v['variant']}: {describe_phases(v)}")
  lines.append("")
  for c in report["cases"]:
    if c.get("model_flops_per_step"):
      lines.append(f"- {c['size']} (batch {c['batch']}): {c['model_flops_per_step'] / 1e9:.1f} "
                   f"GFLOP/step ({c['model_flops_source']})" +
                   (f", XLA counts {c['xla_flops_over_model_flops']:.2f}x that"
                    if c.get("xla_flops_over_model_flops") else "") +
                   f"; {c['steps']} timed steps per variant in {c['rounds']} rounds.")
  if report["failures"]:
    lines += ["", "## Failures", ""]
    lines += [f"- {f['summary']}" for f in report["failures"]]
  if report["notes"]:
    lines += ["", "Notes:", ""] + [f"- {n}" for n in report["notes"]]
  lines += ["", "Timings on a shared machine move with the load; CPU time is the steadier "
            "measure there. Each framework ran in its own process, pinned to the same cores, "
            "timed in alternating rounds.", ""]
  with open(path, "w") as f:
    f.write("\n".join(lines))


# ---------------------------------------------------------------------------------------------


def run_parent(args) -> int:
  t_start = time.perf_counter()
  cpu = _common.cpu_info()
  load_start = _common.load()
  print(f"CPU: {_common.describe_cpu(cpu)}; load {load_start:.2f}", flush=True)
  t = time.perf_counter()
  device, reason = resolve_device(args)
  print(f"device: {device} ({reason}; {time.perf_counter() - t:.1f} s)", flush=True)
  run = Run(args, device, reason)
  if device == "cpu" and not cpu["native_bf16"]:
    run.note("this CPU has no native bf16 (no avx512_bf16 / amx_bf16 in /proc/cpuinfo): torch's "
             "bf16 matmul peak is not measured, and bf16 variants run without bf16 units")
  print("variants: " + ", ".join(v.name for v in run.variants), flush=True)
  settings = {"command": " ".join(["python benchmarks/step_throughput.py"] + sys.argv[1:]),
              "device": device, "device_reason": reason, "threads": args.threads,
              "warmup": args.warmup, "rounds": args.rounds, "steps": args.steps,
              "step_seconds": args.step_seconds, "parallel_build": run.parallel_build,
              "omp_wait_policy": args.omp_wait_policy,
              "variants": [dataclasses.asdict(v) for v in run.variants]}
  run.report["settings"] = settings
  for size in args.sizes:
    batches = sorted(args.batch or ([GPU_BATCH] if run.gpu else CPU_BATCHES[size]))
    run.report["cases"] += run.run_size(size, batches, args.vocab or VOCAB[size])
  versions = {}
  for hello in run.hellos.values():
    versions.update({k: v for k, v in hello["versions"].items() if v})
  versions["python"] = sys.version.split()[0]
  jax_hello, torch_hello = run.hellos.get("jax", {}), run.hellos.get("torch", {})
  run.report["machine"] = {
      "cpu": cpu, "device": device, "backend": jax_hello.get("backend"),
      "device_kind": jax_hello.get("device_kind") if run.gpu else None,
      "torch_device_kind": torch_hello.get("device_kind"),
      "torch_cpu_capability": torch_hello.get("cpu_capability"),
      "cores": (jax_hello or torch_hello).get("cores"), "threads": args.threads,
      "xla_flags": jax_hello.get("xla_flags"), "versions": versions,
      "load_start": load_start, "load_end": _common.load()}
  note = contention_note(run.report)
  if note:
    run.note(note)
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  run.report["workers_cpu_s"] = children.ru_utime + children.ru_stime
  run.report["total_s"] = time.perf_counter() - t_start
  if args.out is None:
    args.out = os.path.join(_common.RESULTS_DIR,
                            "step_throughput_gpu" if run.gpu else "step_throughput")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out + ".json", "w") as f:
    json.dump(run.report, f, indent=1)
  write_markdown(args.out + ".md", run.report)
  print(f"\nwrote {args.out}.json and {args.out}.md (load {_common.load():.2f}); the run took "
        f"{run.report['total_s'] / 60:.1f} min, its workers {run.report['workers_cpu_s'] / 60:.1f} "
        "CPU-min")
  for c in run.report["cases"]:
    if "ratio" in c:
      print(f"{c['size']} batch {c['batch']}: JAX {c['jax_examples_per_s']:.2f} ex/s, PyTorch "
            f"{c['torch_examples_per_s']:.2f} ex/s, ratio {c['ratio']:.2f}x "
            f"({c['ratio_cpu_time']:.2f}x by CPU time)")
  for f in run.report["failures"]:
    print(f"FAILED: {f['summary']}")
  return 1 if run.report["failures"] else 0


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.worker == "jax":
    from benchmarks import step_worker_jax  # pylint: disable=g-import-not-at-top
    return step_worker_jax.main(args)
  if args.worker == "torch":
    from benchmarks import step_worker_torch  # pylint: disable=g-import-not-at-top
    return step_worker_torch.main(args)
  return run_parent(args)


if __name__ == "__main__":
  sys.exit(main())
