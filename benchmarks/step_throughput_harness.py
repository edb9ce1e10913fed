"""The parent's side of benchmarks/step_throughput.py: the worker protocol and the orchestration.

Holds the worker processes (``Variant``, ``Worker``, ``WorkerFailed``: JSON commands to a
worker's stdin, JSON replies from its stdout), the plan (``resolve_device``, ``variants_for``,
``worker_argv``) and ``Run``, which starts the workers of each size, builds, measures the matmul
peak, interleaves the timed rounds and summarizes each case. The command line is in
step_throughput.py (see its docstring for the protocol), the statistics and report writing in
step_throughput_report.py; the workers in step_worker_jax.py and step_worker_torch.py.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import queue
import subprocess
import sys
import threading
import time

from benchmarks import _common
from benchmarks.step_throughput_report import (
  _median,
  describe_peak,
  describe_phases,
  peak_memory,
  print_case,
)

DEFAULTS = {  # per device: JAX compute dtypes, JAX conv_impl values, torch modes
  "cpu": {"compute_dtype": "float32", "conv_impl": "", "torch_modes": "f32"},
  "gpu": {"compute_dtype": "float32,bfloat16", "conv_impl": "xla,cpu", "torch_modes": "amp,f32"},
}
MAX_AUTO_STEPS = {"cpu": 12, "gpu": 50}
STARTUP_TIMEOUT_S = 300

# The entry point that the workers run (with --worker): step_throughput.py, next to this file.
ENTRY_POINT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "step_throughput.py")


def _list(text: str) -> list[str]:
  return [x.strip() for x in text.split(",") if x.strip()]


# ---------------------------------------------------------------------------------------------
# The parent's side of a worker.


@dataclasses.dataclass
class Variant:
  """What one worker runs: a framework and its build options."""

  framework: str  # 'jax' | 'torch'
  name: str  # e.g. 'jax float32', 'jax bfloat16 conv cpu', 'torch amp'
  options: dict  # build options: compute_dtype / conv_impl, or mode


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
    self.proc = subprocess.Popen(
      argv,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      env=env,
      text=True,
      bufsize=1,
      cwd=_common.REPO_ROOT,
    )
    self.replies = queue.Queue()
    self.stderr_tail = collections.deque(maxlen=40)
    self._readers = [
      threading.Thread(target=self._read_stdout, daemon=True),
      threading.Thread(target=self._read_stderr, daemon=True),
    ]
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
    return WorkerFailed(
      {
        "framework": self.framework,
        "variant": self.name,
        "phase": phase,
        "returncode": returncode,
        "signal": sig,
        "error": error,
        "stderr_tail": list(self.stderr_tail),
        "summary": f"{self.name} worker failed in {phase}: {status}; {error_line}",
      }
    )


# ---------------------------------------------------------------------------------------------
# The plan: device and variants.


def resolve_device(args) -> tuple[str, str]:
  """'cpu' or 'gpu', and how it was decided."""
  if args.device != "auto":
    return args.device, "--device"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  probe = subprocess.run(
    [sys.executable, "-c", "import jax; print(jax.default_backend())"],
    capture_output=True,
    text=True,
    env=env,
    timeout=STARTUP_TIMEOUT_S,
  )
  if probe.returncode != 0:
    raise SystemExit(
      f"Could not ask JAX for its backend (exit {probe.returncode}):\n"
      f"{probe.stderr[-2000:]}\nPass --device cpu or gpu."
    )
  backend = probe.stdout.split()[-1]
  return ("cpu" if backend == "cpu" else "gpu"), f"jax.default_backend() = {backend!r}"


def variants_for(args, device: str) -> tuple[list[Variant], str | None]:
  """The variants to run, and a note when --conv-impl had to be ignored."""
  defaults = DEFAULTS[device]
  dtypes = _list(
    args.compute_dtype if args.compute_dtype is not None else defaults["compute_dtype"]
  )
  impls = _list(args.conv_impl if args.conv_impl is not None else defaults["conv_impl"]) or [None]
  note = None
  if impls != [None] and "conv_impl" not in _common.get_config(args.sizes[0]).model:
    note = (
      f"config.model has no conv_impl in this checkout: conv_impl {impls} ignored "
      "(the config's convolutions run)"
    )
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
  argv = [
    sys.executable,
    ENTRY_POINT,
    "--worker",
    framework,
    "--device",
    args.device if framework == "jax" else device,
    f"--xla-flags={args.xla_flags}",
    f"--omp-wait-policy={args.omp_wait_policy}",
  ]
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
    self.parallel_build = args.parallel_build == "yes" or (
      args.parallel_build == "auto" and self.gpu
    )
    self.env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    self.disabled = {}  # framework -> why (it failed at startup)
    self.peak = None
    self.hellos = {}
    self.report = {
      "machine": None,
      "settings": None,
      "matmul_peak": None,
      "cases": [],
      "failures": [],
      "notes": [],
    }
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
    print(
      f"\n== {size}: {d.image_size} px, {d.text_length} tokens, V {vocab}, latent "
      f"{m.latent_dim}; batches {', '.join(map(str, batches))} (load "
      f"{_common.load():.2f})",
      flush=True,
    )
    cases = [
      {
        "size": size,
        "batch": batch,
        "image_size": d.image_size,
        "text_length": d.text_length,
        "vocab": vocab,
        "latent_dim": m.latent_dim,
        "variants": {},
      }
      for batch in batches
    ]
    workers = self._start([v for v in self.variants if v.framework not in self.disabled], cases[0])
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
          res["foreign_modules"] = sorted(
            set(w.hello["foreign_modules"]) | set(final["foreign_modules"])
          )
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
    workers = [
      Worker(v, worker_argv(args, v.framework, self.device), self.env, args.show_worker_log)
      for v in variants
    ]
    alive = []
    for w in workers:
      try:
        w.hello = w.reply("startup", STARTUP_TIMEOUT_S)
        self._check_hello(w)
        alive.append(w)
      except WorkerFailed as e:
        self.fail(e, case)
        self.disabled[w.framework] = e.report["summary"]
        self.note(f"{w.framework} is left out of the remaining runs: its worker failed at startup")
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
      self.note(
        "JAX ran with jax_disable_most_optimizations (JAX_DISABLE_MOST_OPTIMIZATIONS): "
        "a smoke run, its timings say nothing about speed"
      )
    if w.framework == "jax" and (h["backend"] == "cpu") == self.gpu:
      self.note(f"JAX's backend is {h['backend']!r} but the plan was for a {self.device}")
    if w.framework == "torch" and self.gpu and not h["cuda_available"]:
      self.note(
        "JAX runs on a GPU but this PyTorch has no CUDA: PyTorch runs on the CPU, so "
        "the ratio compares different devices"
      )

  def _build(self, workers: list, case: dict, size: str, batch: int, vocab: int) -> list:
    args = self.args
    ok = []

    def command(w):
      common = dict(
        size=size,
        batch=batch,
        vocab=vocab,
        warmup=args.warmup,
        warmup_seconds=args.warmup_seconds,
        **w.variant.options,
      )
      if w.framework == "jax":
        return common
      device = "cuda" if self.gpu and w.hello["cuda_available"] else "cpu"
      return dict(
        common, device=device, threads=args.threads if device == "cpu" and args.threads else None
      )

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
      pending = [(w, None) for w in started] + [
        (w, command(w)) for w in workers if w.framework != "jax"
      ]
    else:
      pending = [(w, command(w)) for w in workers]
    for w, cmd in pending:
      if cmd is not None:
        print(f"{w.name}: building (load {_common.load():.2f}) ...", flush=True)
      try:
        reply = (
          w.request("build", args.timeout, **cmd)
          if cmd is not None
          else w.reply("build", args.timeout)
        )
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
      print(
        f"matmul peak, {framework}: "
        + ", ".join(f"{k} {describe_peak(v)}" for k, v in peak.items() if k in ("f32", "bf16"))
        + f" ({peak['seconds']:.1f} s, load {peak['load']:.2f})",
        flush=True,
      )
    measured = [self.peak[f] for f in ("jax", "torch") if f in self.peak]
    for dtype in ("f32", "bf16"):
      values = [p[dtype]["flop_per_s"] for p in measured if "flop_per_s" in p.get(dtype, {})]
      self.peak[dtype + "_peak"] = max(values) if values else None
    self.report["matmul_peak"] = self.peak

  def _time(self, workers: list, case: dict, batch: int) -> list:
    args = self.args
    warm = [
      case["variants"][w.name]["warmup_step_s"][-1]
      for w in workers
      if case["variants"][w.name]["warmup_step_s"]
    ]
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
        print(
          f"  round {r + 1}/{args.rounds} {w.name:24s}: {n} steps, median "
          f"{_median(reply['wall']):.3f} s wall, {_median(reply['cpu']):.3f} s CPU "
          f"(load {reply['load_after']:.2f})",
          flush=True,
        )
    case["load_during"] = (
      {"min": min(loads), "max": max(loads), "samples": loads} if loads else None
    )
    for w in workers:
      res, t = case["variants"][w.name], times[w.name]
      wall, cpu = _common.summarize(t["wall"]), _common.summarize(t["cpu"])
      res.update(
        step_wall_s=wall,
        step_cpu_s=cpu,
        examples_per_s=batch / wall["median"],
        examples_per_cpu_s=batch / cpu["median"],
        threads_busy=cpu["median"] / wall["median"],
        steady_rss_bytes=t["rss"],
      )
    return workers

  def _summarize(self, case: dict, batch: int) -> None:
    """FLOP rates, peak fractions, memory and the JAX / PyTorch ratios of a case."""
    timed = {k: v for k, v in case["variants"].items() if "step_wall_s" in v}
    torch_flops = next(
      (v["model_flops_per_step"] for v in timed.values() if v["framework"] == "torch"), None
    )
    xla_flops = next(
      (
        v["xla_flops_per_step"]
        for v in timed.values()
        if v["framework"] == "jax" and v.get("xla_flops_per_step")
      ),
      None,
    )
    model_flops = torch_flops or xla_flops
    case["model_flops_per_step"] = model_flops
    case["model_flops_source"] = (
      "torch.utils.flop_counter" if torch_flops else "XLA cost analysis" if xla_flops else None
    )
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
        jv["variant"]: {
          tv["variant"]: jv["examples_per_s"] / tv["examples_per_s"]
          for tv in timed.values()
          if tv["framework"] == "torch"
        }
        for jv in timed.values()
        if jv["framework"] == "jax"
      }
