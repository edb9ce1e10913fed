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
on a shared 2-core machine). XLA:CPU gets the flags main.py trains with (mopoe_jax.platform.runtime;
--no-xla-defaults leaves them out) plus --xla-flags. Both frameworks step at the first learning
rate of the JAX warm-up so that neither diverges while timed; torch flushes denormals on a CPU
as XLA:CPU does.

Writes benchmarks/results/step_throughput.json and .md (on a GPU step_throughput_gpu.*; --out).

The worker protocol and the orchestration are in step_throughput_harness.py, the statistics
and the Markdown and console reports in step_throughput_report.py; this file is the command
line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import time

if __package__ in (None, ""):
  # Run as a file: the repository root must come first, so that the packages of this checkout
  # are imported rather than an installed copy.
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks import _common  # noqa: E402
from benchmarks.step_throughput_harness import Run, _list, resolve_device  # noqa: E402
from benchmarks.step_throughput_report import contention_note, write_markdown  # noqa: E402

SIZES = ("paper", "synthetic", "tiny")
CPU_BATCHES = {"paper": (8, 32, 64), "synthetic": (64,), "tiny": (8,)}
GPU_BATCH = 200  # the paper's
VOCAB = {"paper": 2900, "synthetic": 2900, "tiny": 64}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--sizes",
    default="paper,synthetic",
    help="comma list: paper (configs/default.py), synthetic, tiny",
  )
  parser.add_argument(
    "--batch",
    default=None,
    help="comma list of batch sizes for every size (default on a CPU: paper "
    "8,32,64, synthetic 64, tiny 8; on a GPU: 200)",
  )
  parser.add_argument(
    "--steps",
    type=int,
    default=None,
    help="timed steps per variant (default: about --step-seconds of steps, "
    "at least --rounds, at most 12 on a CPU, 50 on a GPU)",
  )
  parser.add_argument(
    "--step-seconds",
    type=float,
    default=10.0,
    help="target timed seconds per variant when --steps is not given",
  )
  parser.add_argument(
    "--rounds",
    type=int,
    default=3,
    help="the timed steps are split into this many alternating rounds",
  )
  parser.add_argument(
    "--warmup",
    type=int,
    default=2,
    help="untimed steps after the build (fewer once --warmup-seconds)",
  )
  parser.add_argument(
    "--warmup-seconds",
    type=float,
    default=5.0,
    help="no further warm-up step once the warm-up steps took this long",
  )
  parser.add_argument(
    "--threads", type=int, default=2, help="cores for each framework on a CPU (0: do not pin)"
  )
  parser.add_argument(
    "--vocab", type=int, default=None, help="vocabulary size (default: 2900; tiny: 64)"
  )
  parser.add_argument(
    "--compute-dtype",
    default=None,
    help="comma list of config.model.compute_dtype for JAX: float32, "
    "bfloat16, auto (default: float32 on a CPU, float32,bfloat16 on a GPU)",
  )
  parser.add_argument(
    "--conv-impl",
    default=None,
    help="comma list of config.model.conv_impl for JAX: auto, xla, cpu "
    "(default: the config's on a CPU, xla,cpu on a GPU); ignored with a "
    "note when the config has no conv_impl",
  )
  parser.add_argument(
    "--torch-modes",
    default=None,
    help="comma list: f32 (plain), amp (channels_last + autocast bf16) "
    "(default: f32 on a CPU, amp,f32 on a GPU)",
  )
  parser.add_argument(
    "--device",
    default="auto",
    choices=("auto", "cpu", "gpu"),
    help="auto: GPU if jax.default_backend() is one (torch then uses CUDA if it has it)",
  )
  parser.add_argument(
    "--parallel-build",
    default="auto",
    choices=("auto", "yes", "no"),
    help="build and compile the JAX variants of a case at once (auto: on a "
    "GPU, where the host has the cores; compile times then overlap)",
  )
  parser.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS")
  parser.add_argument(
    "--no-xla-defaults",
    action="store_true",
    help="do not add mopoe_jax.platform.runtime's CPU flags (main.py adds them)",
  )
  parser.add_argument(
    "--omp-wait-policy",
    default="PASSIVE",
    choices=("PASSIVE", "ACTIVE", ""),
    help="OMP_WAIT_POLICY for torch's OpenMP ('' leaves it unset). With the "
    "default spinning, torch slows 10-20x when other processes share the cores",
  )
  parser.add_argument("--skip-torch", action="store_true")
  parser.add_argument("--no-peak", action="store_true", help="skip the matmul peak measurement")
  parser.add_argument(
    "--peak-budget",
    type=float,
    default=1.0,
    help="seconds of timed matmuls per framework and dtype",
  )
  parser.add_argument(
    "--timeout",
    type=float,
    default=1200.0,
    help="seconds to wait for any one reply of a worker before killing it",
  )
  parser.add_argument(
    "--show-worker-log",
    action="store_true",
    help="echo the workers' stderr (else only its tail on a failure)",
  )
  parser.add_argument(
    "--out",
    default=None,
    help="output path without extension (.json and .md are written; default "
    "benchmarks/results/step_throughput, on a GPU step_throughput_gpu)",
  )
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
      parser.error(
        "--simulate-crash FRAMEWORK[:PHASE], FRAMEWORK jax|torch, PHASE startup|build|steps"
      )
    args.simulate_crash = (framework, phase)
  return args


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
    run.note(
      "this CPU has no native bf16 (no avx512_bf16 / amx_bf16 in /proc/cpuinfo): torch's "
      "bf16 matmul peak is not measured, and bf16 variants run without bf16 units"
    )
  print("variants: " + ", ".join(v.name for v in run.variants), flush=True)
  settings = {
    "command": " ".join(["python benchmarks/step_throughput.py"] + sys.argv[1:]),
    "device": device,
    "device_reason": reason,
    "threads": args.threads,
    "warmup": args.warmup,
    "rounds": args.rounds,
    "steps": args.steps,
    "step_seconds": args.step_seconds,
    "parallel_build": run.parallel_build,
    "omp_wait_policy": args.omp_wait_policy,
    "variants": [dataclasses.asdict(v) for v in run.variants],
  }
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
    "cpu": cpu,
    "device": device,
    "backend": jax_hello.get("backend"),
    "device_kind": jax_hello.get("device_kind") if run.gpu else None,
    "torch_device_kind": torch_hello.get("device_kind"),
    "torch_cpu_capability": torch_hello.get("cpu_capability"),
    "cores": (jax_hello or torch_hello).get("cores"),
    "threads": args.threads,
    "xla_flags": jax_hello.get("xla_flags"),
    "versions": versions,
    "load_start": load_start,
    "load_end": _common.load(),
  }
  note = contention_note(run.report)
  if note:
    run.note(note)
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  run.report["workers_cpu_s"] = children.ru_utime + children.ru_stime
  run.report["total_s"] = time.perf_counter() - t_start
  if args.out is None:
    args.out = os.path.join(
      _common.RESULTS_DIR, "step_throughput_gpu" if run.gpu else "step_throughput"
    )
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out + ".json", "w") as f:
    json.dump(run.report, f, indent=1)
  write_markdown(args.out + ".md", run.report)
  print(
    f"\nwrote {args.out}.json and {args.out}.md (load {_common.load():.2f}); the run took "
    f"{run.report['total_s'] / 60:.1f} min, its workers {run.report['workers_cpu_s'] / 60:.1f} "
    "CPU-min"
  )
  for c in run.report["cases"]:
    if "ratio" in c:
      print(
        f"{c['size']} batch {c['batch']}: JAX {c['jax_examples_per_s']:.2f} ex/s, PyTorch "
        f"{c['torch_examples_per_s']:.2f} ex/s, ratio {c['ratio']:.2f}x "
        f"({c['ratio_cpu_time']:.2f}x by CPU time)"
      )
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
