"""Training-step throughput of the JAX model against the PyTorch baseline, same shapes, one process.

  python benchmarks/step_throughput.py                       # paper and synthetic sizes
  python benchmarks/step_throughput.py --sizes paper --batch 8 --steps 12 --threads 2
  python benchmarks/step_throughput.py --sizes synthetic --skip-torch

For each size the JAX step (``mopoe_jax.train.train_step``: forward, loss, backward, Adam, the
non-finite guard) and the PyTorch step (``benchmarks/torch_mopoe.py``: forward, loss, backward,
Adam) run on identical shapes and identical data, one after the other in this process. Timed steps
are interleaved in --rounds rounds (JAX steps, then torch steps, then JAX again, ...) so that both
see the same machine load. Printed per size: JAX init and compile time and torch warm-up time;
median, interquartile range and min/max of the steady-state step time (wall clock and process CPU
time, all threads); examples/s; peak memory; FLOPs per step from XLA's cost analysis and from
torch's FLOP counter (the model's useful FLOPs); achieved FLOP/s and the fraction of a matmul peak
measured in this process; the JAX / PyTorch throughput ratio. Writes
benchmarks/results/step_throughput.json and .md.

Sizes: ``paper`` = configs/default.py (128 px, 128 tokens, latent 512, V = --vocab, default 2900),
batch 8 by default on a CPU; ``synthetic`` = configs/synthetic.py (64 px, 64 tokens, reduced
widths), batch 64. Both frameworks get --threads threads: the process is pinned to that many
cores (sched_setaffinity, which sizes XLA:CPU's intra-op pool) and torch.set_num_threads.
Torch's OpenMP runs with OMP_WAIT_POLICY=PASSIVE (--omp-wait-policy): its default spin-waiting
makes every parallel region wait out a time slice when another process holds a core, which on
a shared 2-core machine slowed the baseline 10-20x (17 s instead of 0.9 s per synthetic step).
XLA gets the flags that main.py trains with (mopoe_jax.xla_config; --no-xla-defaults leaves
them out) plus --xla-flags. Both step at the first learning rate of the JAX warm-up (lr / warmup_steps) so that neither
diverges while it is timed (the reference diverges within steps at lr 5e-4 on random data, and
non-finite or denormal values change the speed), and torch flushes denormals as XLA:CPU does.

On a shared machine, timings move with the load of other processes: every figure is printed
with os.getloadavg(), and the CPU-time figures are the less load-sensitive ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time

if __package__ in (None, ""):
  # Run as a file: the repository root must come first, so that the packages of this checkout
  # are imported rather than an installed copy.
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SIZES = ("paper", "synthetic")
DEFAULT_BATCH = {"paper": 8, "synthetic": 64}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="paper,synthetic",
                      help="comma-separated: paper (configs/default.py), synthetic")
  parser.add_argument("--batch", type=int, default=None,
                      help="batch size for every size (default: paper 8, synthetic 64)")
  parser.add_argument("--steps", type=int, default=12, help="timed steps per framework")
  parser.add_argument("--rounds", type=int, default=3,
                      help="the timed steps are split into this many alternating rounds")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compile")
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--vocab", type=int, default=2900, help="vocabulary size")
  parser.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"),
                      help="config.model.compute_dtype of the JAX model")
  parser.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS")
  parser.add_argument("--no-xla-defaults", action="store_true",
                      help="do not add mopoe_jax.xla_config's CPU flags (main.py adds them)")
  parser.add_argument("--omp-wait-policy", default="PASSIVE", choices=("PASSIVE", "ACTIVE", ""),
                      help="OMP_WAIT_POLICY for torch's OpenMP ('' leaves it unset). With the "
                      "default spinning, torch slows 10-20x when other processes share the cores")
  parser.add_argument("--skip-torch", action="store_true")
  parser.add_argument("--no-peak", action="store_true", help="skip the matmul peak measurement")
  parser.add_argument("--out", default=os.path.join(RESULTS_DIR, "step_throughput"),
                      help="output path without extension (.json and .md are written)")
  args = parser.parse_args(argv)
  args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
  unknown = [s for s in args.sizes if s not in SIZES]
  if unknown:
    parser.error(f"--sizes {unknown}: choose from {SIZES}")
  return args


def set_threads(threads: int) -> list[int]:
  """Pins the process to ``threads`` cores before XLA:CPU sizes its thread pool from them."""
  cpus = sorted(os.sched_getaffinity(0))
  if threads > len(cpus):
    raise ValueError(f"--threads {threads} but only {len(cpus)} cores are available: {cpus}.")
  os.sched_setaffinity(0, cpus[:threads])
  if threads == 1:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false").strip()
  return cpus[:threads]


def load() -> float:
  return os.getloadavg()[0]


def rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


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
  q = np.percentile(times, [25, 50, 75])
  return {"median": float(q[1]), "q25": float(q[0]), "q75": float(q[2]), "iqr": float(q[2] - q[0]),
          "min": float(min(times)), "max": float(max(times)), "n": len(times)}


def flops_from_cost_analysis(compiled) -> float | None:
  """XLA's FLOP count of a compiled program (a dict, or a list of dicts in older versions)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


# ---------------------------------------------------------------------------------------------
# Peak matmul FLOP/s of this machine, in this process, at the same thread count.


def matmul_peak(n: int = 2048, reps: int = 10) -> dict:
  import jax
  import jax.numpy as jnp
  import torch
  out = {"n": n}
  for name, dtype in (("jax_f32", jnp.float32), ("jax_bf16", jnp.bfloat16)):
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best, cpu = [], []
    for _ in range(reps):
      t, c = time.perf_counter(), time.process_time()
      f(a).block_until_ready()
      best.append(time.perf_counter() - t)
      cpu.append(time.process_time() - c)
    i = int(np.argmin(best))
    out[name] = 2 * n ** 3 / best[i]
    out[name + "_threads_busy"] = cpu[i] / best[i]
  for name, dtype in (("torch_f32", torch.float32), ("torch_bf16", torch.bfloat16)):
    a = torch.ones((n, n), dtype=dtype)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(reps))
    out[name] = 2 * n ** 3 / best
  out["f32_peak"] = max(out["jax_f32"], out["torch_f32"])
  out["bf16_peak"] = max(out["jax_bf16"], out["torch_bf16"])
  out["load"] = load()
  return out


def _timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


# ---------------------------------------------------------------------------------------------
# The two frameworks.


def get_config(size: str, vocab: int, compute_dtype: str):
  from configs import default, synthetic
  config = (default if size == "paper" else synthetic).get_config()
  config.model.compute_dtype = compute_dtype
  return config


def make_data(config, batch_size: int, vocab: int, seed: int = 0) -> dict:
  """Random uint8 images, random tokens, every modality available (numpy)."""
  rng = np.random.default_rng(seed)
  s, t = config.data.image_size, config.data.text_length
  return {"frontal": rng.integers(0, 256, (batch_size, s, s, 1), dtype=np.uint8),
          "lateral": rng.integers(0, 256, (batch_size, s, s, 1), dtype=np.uint8),
          "text": rng.integers(0, vocab, (batch_size, t), dtype=np.int32),
          "available": np.ones((batch_size, 3), bool)}


class JaxRunner:
  """Builds, compiles and steps the JAX training step."""

  def __init__(self, config, vocab: int, data: dict):
    import jax
    from mopoe_jax import train
    self.jax = jax
    model = train.create_model(config, vocab)
    step_config = train.StepConfig.from_config(config, model)
    t = time.perf_counter()
    self.state = jax.jit(functools.partial(train.init_state, model, config))(
        jax.random.PRNGKey(0))
    jax.block_until_ready(self.state)
    self.init_s = time.perf_counter() - t
    self.num_params = int(sum(x.size for x in jax.tree.leaves(self.state.params)))
    self.batch = jax.device_put(data)
    self.key = jax.random.PRNGKey(1)
    step = jax.jit(functools.partial(train.train_step, model=model, step_config=step_config),
                   donate_argnums=(0,))
    t = time.perf_counter()
    lowered = step.lower(self.state, self.batch, self.key)
    self.lower_s = time.perf_counter() - t
    t = time.perf_counter()
    self.compiled = lowered.compile()
    self.compile_s = time.perf_counter() - t
    self.xla_flops = flops_from_cost_analysis(self.compiled)
    self.losses = []

  def step(self):
    self.state, metrics = self.compiled(self.state, self.batch, self.key)
    self.losses.append(float(metrics["loss"]))  # waits for the step

  def first_lr(self, config) -> float:
    t = config.train
    return t.learning_rate / t.warmup_steps if t.warmup_steps else t.learning_rate

  def memory_stats(self):
    return self.jax.devices()[0].memory_stats()

  def finite(self) -> bool:
    return bool(np.all(np.isfinite(self.losses))) and int(self.state.bad_step) < 0


def torch_config(config, vocab: int, learning_rate: float):
  from benchmarks import torch_mopoe as tm
  d, m = config.data, config.model
  return tm.TorchModelConfig(
      latent_dim=m.latent_dim, vocab_size=vocab, image_size=d.image_size,
      text_length=d.text_length, text_embed_dim=m.text_encoder_widths[0],
      image_encoder_widths=tuple(m.image_encoder_widths),
      image_decoder_widths=tuple(m.image_decoder_widths),
      text_encoder_widths=tuple(m.text_encoder_widths),
      text_decoder_widths=tuple(m.text_decoder_widths), dropout=m.dropout,
      variant=m.variant, prior_expert=m.prior_expert, mixture=m.assignment,
      image_scale=m.image_scale, rec_weights=tuple(m.rec_weights), beta=m.beta,
      mask_text_padding=m.mask_text_padding, learning_rate=learning_rate,
      adam_betas=(config.train.b1, config.train.b2))


class TorchRunner:
  """Builds the PyTorch baseline and steps it on the same data (NCHW float, int64 tokens)."""

  def __init__(self, cfg, data: dict):
    import torch
    from benchmarks import torch_mopoe as tm
    torch.manual_seed(0)
    self.model = tm.TorchMoPoE(cfg)
    self.num_params = int(sum(p.numel() for p in self.model.parameters()))
    self._step = tm.make_train_step(self.model, tm.make_optimizer(self.model, cfg))
    self.batch = {
        "frontal": torch.from_numpy(data["frontal"]).permute(0, 3, 1, 2).float() / 255.0,
        "lateral": torch.from_numpy(data["lateral"]).permute(0, 3, 1, 2).float() / 255.0,
        "text": torch.from_numpy(data["text"]).long()}
    self.batch = {k: v.contiguous() for k, v in self.batch.items()}
    self.losses = []

  def step(self):
    self.losses.append(self._step(self.batch)["loss"])

  def model_flops(self) -> float:
    """Useful FLOPs of one step (forward + backward) by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode
    self.model.train()
    counter = FlopCounterMode(display=False)
    with counter:
      loss, _ = self.model.loss(self.batch)
      loss.backward()
    self.model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())

  def finite(self) -> bool:
    return bool(np.all(np.isfinite(self.losses)))


def time_steps(step, n: int) -> tuple[list, list]:
  wall, cpu = [], []
  for _ in range(n):
    t, c = time.perf_counter(), time.process_time()
    step()
    wall.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
  return wall, cpu


# ---------------------------------------------------------------------------------------------


def run_size(size: str, args, peak: dict | None) -> dict:
  batch_size = args.batch or DEFAULT_BATCH[size]
  config = get_config(size, args.vocab, args.compute_dtype)
  data = make_data(config, batch_size, args.vocab)
  d, m = config.data, config.model
  result = {"size": size, "batch": batch_size, "image_size": d.image_size,
            "text_length": d.text_length, "vocab": args.vocab, "latent_dim": m.latent_dim,
            "compute_dtype": args.compute_dtype, "load_start": load()}
  print(f"\n== {size}: {d.image_size} px, {d.text_length} tokens, V {args.vocab}, latent "
        f"{m.latent_dim}, batch {batch_size}, JAX compute {args.compute_dtype} "
        f"(load {load():.2f})", flush=True)

  rss0 = rss_bytes()
  with RssPeak() as jax_mem:
    jr = JaxRunner(config, args.vocab, data)
    for _ in range(args.warmup):
      jr.step()
  lr = jr.first_lr(config)
  result["jax"] = {"init_s": jr.init_s, "lower_s": jr.lower_s, "compile_s": jr.compile_s,
                   "xla_flops_per_step": jr.xla_flops, "params": jr.num_params,
                   "learning_rate": lr}
  stats = jr.memory_stats()
  result["jax"]["peak_memory"] = (
      {"source": "device.memory_stats", "bytes": stats.get("peak_bytes_in_use")} if stats else
      {"source": "process RSS sampled during init, compile and warm-up", "bytes": jax_mem.peak,
       "above_baseline_bytes": jax_mem.peak - rss0})
  print(f"JAX: {jr.num_params:,} parameters; init {jr.init_s:.1f} s, lower {jr.lower_s:.1f} s, "
        f"compile {jr.compile_s:.1f} s (load {load():.2f}); XLA cost analysis "
        f"{(jr.xla_flops or 0) / 1e9:.1f} GFLOP/step", flush=True)

  tr = None
  if not args.skip_torch:
    import torch
    cfg = torch_config(config, args.vocab, lr)
    rss1 = rss_bytes()
    with RssPeak() as torch_mem:
      tr = TorchRunner(cfg, data)
      t = time.perf_counter()
      tr.step()
      first = time.perf_counter() - t
      for _ in range(max(args.warmup - 1, 0)):
        tr.step()
      warm = time.perf_counter() - t
    model_flops = tr.model_flops()
    result["torch"] = {"first_step_s": first, "warmup_s": warm, "params": tr.num_params,
                       "model_flops_per_step": model_flops, "learning_rate": lr,
                       "threads": torch.get_num_threads(),
                       "peak_memory": {"source": "process RSS sampled during build and warm-up",
                                       "bytes": torch_mem.peak,
                                       "above_baseline_bytes": torch_mem.peak - rss1}}
    print(f"torch: {tr.num_params:,} parameters; first step {first:.1f} s, warm-up "
          f"({args.warmup} steps) {warm:.1f} s (load {load():.2f}); FLOP counter "
          f"{model_flops / 1e9:.1f} GFLOP/step", flush=True)

  # Interleaved timing rounds.
  runners = [("jax", jr)] + ([("torch", tr)] if tr is not None else [])
  times = {name: {"wall": [], "cpu": []} for name, _ in runners}
  loads = []
  per_round = [args.steps // args.rounds + (r < args.steps % args.rounds)
               for r in range(args.rounds)]
  steady_rss = {name: 0 for name, _ in runners}
  for r, n in enumerate(per_round):
    for name, runner in runners:
      loads.append(load())
      with RssPeak() as mem:
        wall, cpu = time_steps(runner.step, n)
      steady_rss[name] = max(steady_rss[name], mem.peak)
      times[name]["wall"] += wall
      times[name]["cpu"] += cpu
      print(f"  round {r + 1}/{args.rounds} {name:5s}: {n} steps, median "
            f"{statistics.median(wall):.3f} s wall, {statistics.median(cpu):.3f} s CPU "
            f"(load {load():.2f})", flush=True)
  result["load_during"] = {"min": min(loads), "max": max(loads), "samples": loads}
  result["load_end"] = load()
  for name, runner in runners:
    wall, cpu = summarize(times[name]["wall"]), summarize(times[name]["cpu"])
    out = result[name]
    out["peak_memory"]["steady_state_process_bytes"] = steady_rss[name]
    out.update(step_wall_s=wall, step_cpu_s=cpu, examples_per_s=batch_size / wall["median"],
               examples_per_cpu_s=batch_size / cpu["median"], losses_finite=runner.finite(),
               threads_busy=cpu["median"] / wall["median"])
  jx = result["jax"]
  jx["xla_flop_per_s"] = (jx["xla_flops_per_step"] or 0) / jx["step_wall_s"]["median"]
  result["jax_examples_per_s"] = jx["examples_per_s"]
  if tr is not None:
    to = result["torch"]
    mf = to["model_flops_per_step"]
    jx["model_flop_per_s"] = mf / jx["step_wall_s"]["median"]
    to["model_flop_per_s"] = mf / to["step_wall_s"]["median"]
    result["torch_examples_per_s"] = to["examples_per_s"]
    result["ratio"] = jx["examples_per_s"] / to["examples_per_s"]
    result["ratio_cpu_time"] = to["step_cpu_s"]["median"] / jx["step_cpu_s"]["median"]
    result["xla_flops_over_model_flops"] = (jx["xla_flops_per_step"] or 0) / mf
  if peak:
    key = "bf16_peak" if args.compute_dtype == "bfloat16" else "f32_peak"
    for name, _ in runners:
      fps = result[name].get("model_flop_per_s")
      if fps:
        result[name]["fraction_of_peak"] = fps / peak[key]
  print_size(result, peak)
  return result


def print_size(r: dict, peak: dict | None):
  gf = 1e9
  rows = [("framework", "compile/warm-up s", "median s/step", "IQR s", "min-max s",
           "CPU s/step", "ex/s", "peak RSS GiB (+own)", "model GFLOP/s", "of peak")]
  for name in ("jax", "torch"):
    if name not in r or "step_wall_s" not in r[name]:
      continue
    x = r[name]
    w, c = x["step_wall_s"], x["step_cpu_s"]
    prep = x.get("compile_s", x.get("warmup_s"))
    fps = x.get("model_flop_per_s")
    rows.append((name, f"{prep:.1f}", f"{w['median']:.3f}", f"{w['iqr']:.3f}",
                 f"{w['min']:.3f}-{w['max']:.3f}", f"{c['median']:.3f}",
                 f"{x['examples_per_s']:.2f}",
                 f"{x['peak_memory']['bytes'] / 2 ** 30:.2f} "
                 f"(+{x['peak_memory'].get('above_baseline_bytes', 0) / 2 ** 30:.2f})",
                 f"{fps / gf:.1f}" if fps else "-",
                 f"{x['fraction_of_peak']:.1%}" if x.get("fraction_of_peak") else "-"))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  for row in rows:
    print("  " + "  ".join(v.rjust(w) for v, w in zip(row, widths)))
  jx = r["jax"]
  print(f"  XLA: {jx['xla_flops_per_step'] / gf:.1f} GFLOP/step, "
        f"{jx['xla_flop_per_s'] / gf:.1f} GFLOP/s achieved by XLA's own count")
  if "ratio" in r:
    print(f"  JAX / PyTorch throughput: {r['ratio']:.2f}x wall, {r['ratio_cpu_time']:.2f}x by "
          f"CPU time; XLA counts {r['xla_flops_over_model_flops']:.2f}x the model's FLOPs; "
          f"losses finite: jax {jx['losses_finite']}, torch {r['torch']['losses_finite']}")
  print(f"  load during timing {r['load_during']['min']:.2f}-{r['load_during']['max']:.2f}",
        flush=True)


def write_markdown(path: str, report: dict):
  env = report["environment"]
  lines = ["# Training-step throughput: JAX vs PyTorch (CPU)", "",
           f"`{env['command']}`", "",
           f"{env['cpu']}; {env['threads']} threads each (pinned cores {env['cores']}); "
           f"jax {env['jax']}, torch {env['torch']}; XLA_FLAGS=`{env['xla_flags'] or ''}`; "
           f"OMP_WAIT_POLICY={env['omp_wait_policy']}; "
           f"load average {env['load_start']:.2f} at start, {env['load_end']:.2f} at end.", ""]
  peak = report.get("matmul_peak")
  if peak:
    lines += [f"Matmul peak ({peak['n']}^3, same process): f32 {peak['f32_peak'] / 1e9:.0f} "
              f"GFLOP/s, bf16 {peak['bf16_peak'] / 1e9:.0f} GFLOP/s (load {peak['load']:.2f}).",
              ""]
  lines += ["| size | batch | framework | compile / warm-up s | median s/step (IQR) | CPU s/step "
            "| examples/s | peak RSS GiB (+own) | model GFLOP/s | of peak | load |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in report["sizes"]:
    for name in ("jax", "torch"):
      x = r.get(name)
      if not x or "step_wall_s" not in x:
        continue
      w, c = x["step_wall_s"], x["step_cpu_s"]
      prep = x.get("compile_s", x.get("warmup_s"))
      fps = x.get("model_flop_per_s")
      frac = x.get("fraction_of_peak")
      lines.append(
          f"| {r['size']} | {r['batch']} | {name} | {prep:.1f} | {w['median']:.3f} "
          f"({w['iqr']:.3f}) | {c['median']:.3f} | {x['examples_per_s']:.2f} | "
          f"{x['peak_memory']['bytes'] / 2 ** 30:.2f} "
          f"(+{x['peak_memory'].get('above_baseline_bytes', 0) / 2 ** 30:.2f}) | "
          f"{f'{fps / 1e9:.1f}' if fps else '-'} | {f'{frac:.1%}' if frac else '-'} | "
          f"{r['load_during']['min']:.2f}-{r['load_during']['max']:.2f} |")
  lines.append("")
  for r in report["sizes"]:
    if "ratio" in r:
      lines.append(f"- {r['size']} (batch {r['batch']}): JAX / PyTorch = **{r['ratio']:.2f}x** "
                   f"by wall time, {r['ratio_cpu_time']:.2f}x by CPU time; XLA counts "
                   f"{r['jax']['xla_flops_per_step'] / 1e9:.1f} GFLOP/step, torch's FLOP counter "
                   f"{r['torch']['model_flops_per_step'] / 1e9:.1f} "
                   f"({r['xla_flops_over_model_flops']:.2f}x).")
  lines += ["", "Compile = XLA lower + compile of the train step (JAX); warm-up = the first "
            "steps (torch). Peak memory is the process RSS (the CPU device has no memory "
            "stats), sampled during build, compile and warm-up; (+own) is the rise over the "
            "RSS before that framework built its model (the torch total includes the JAX "
            "buffers still alive; the JAX rise includes XLA's compile-time memory). The JSON "
            "also has the process peak during each framework's timed steps. Timings on a "
            "shared machine move with the load; CPU time is the steadier measure.", ""]
  with open(path, "w") as f:
    f.write("\n".join(lines))


def main(argv=None):
  args = parse_args(argv)
  cores = set_threads(args.threads)
  if args.xla_flags:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
  if not args.no_xla_defaults:
    from mopoe_jax import xla_config
    xla_config.apply_defaults()  # the flags main.py trains with
  if args.omp_wait_policy:
    os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy  # read when libgomp loads
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import jax
  torch = None
  if not args.skip_torch:
    import torch
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
  cpu_name = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu_name = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
  except (OSError, StopIteration):
    pass
  env = {"command": " ".join(["python benchmarks/step_throughput.py"] + sys.argv[1:]),
         "cpu": cpu_name, "threads": args.threads, "cores": cores,
         "jax": jax.__version__, "torch": torch.__version__ if torch else None,
         "xla_flags": os.environ.get("XLA_FLAGS", ""), "backend": jax.default_backend(),
         "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
         "load_start": load()}
  print(f"{cpu_name}: {args.threads} threads (cores {cores}); jax {jax.__version__} "
        f"({jax.default_backend()}), torch {env['torch']}; XLA_FLAGS="
        f"{env['xla_flags']!r}; OMP_WAIT_POLICY={env['omp_wait_policy']} (load {load():.2f})",
        flush=True)
  peak = None
  if not args.no_peak and not args.skip_torch:
    peak = matmul_peak()
    print(f"matmul peak 2048^3: f32 jax {peak['jax_f32'] / 1e9:.0f} / torch "
          f"{peak['torch_f32'] / 1e9:.0f} GFLOP/s (XLA threads busy "
          f"{peak['jax_f32_threads_busy']:.2f}); bf16 jax {peak['jax_bf16'] / 1e9:.0f} / torch "
          f"{peak['torch_bf16'] / 1e9:.0f} GFLOP/s (load {peak['load']:.2f})", flush=True)
  report = {"environment": env, "matmul_peak": peak, "sizes": []}
  for size in args.sizes:
    report["sizes"].append(run_size(size, args, peak))
  env["load_end"] = load()
  env["ru_maxrss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out + ".json", "w") as f:
    json.dump(report, f, indent=1)
  write_markdown(args.out + ".md", report)
  print(f"\nwrote {args.out}.json and {args.out}.md (load {load():.2f})")
  for r in report["sizes"]:
    if "ratio" in r:
      print(f"{r['size']}: JAX {r['jax_examples_per_s']:.2f} ex/s, PyTorch "
            f"{r['torch_examples_per_s']:.2f} ex/s, ratio {r['ratio']:.2f}x "
            f"({r['ratio_cpu_time']:.2f}x by CPU time)")


if __name__ == "__main__":
  main()
