"""Statistics and reporting of benchmarks/step_throughput.py: no processes, no frameworks.

Holds the summaries of a variant and of a run (``peak_memory``, ``contention_note``), the
console table of a case (``print_case``) and the Markdown report (``write_markdown``). The
command line is in step_throughput.py, the workers' protocol and the orchestration in
step_throughput_harness.py (which uses this module; this one does not import it).
"""

from __future__ import annotations

import statistics

from benchmarks import _common


def peak_memory(v: dict) -> dict:
  """The variant's peak memory for its batch: the device's on a GPU, else the worker's RSS."""
  mem = v.get("memory") or {}
  if mem.get("device_peak_bytes") is not None:
    source = (
      "device.memory_stats()['peak_bytes_in_use'] (the worker's peak so far; batches "
      "run in ascending order)"
      if v["framework"] == "jax"
      else "torch.cuda.max_memory_allocated() since the build"
    )
    return {"source": source, "bytes": mem["device_peak_bytes"]}
  return {
    "source": "worker RSS sampled every 10 ms from the build to the end of the timed "
    "steps (JAX's includes compilation)",
    "bytes": mem.get("build_and_steps_peak_rss_bytes"),
    "steady_state_rss_bytes": v.get("steady_rss_bytes"),
    "process_peak_rss_bytes": mem.get("process_peak_rss_bytes"),
  }


def _median(values: list[float]) -> float:
  return statistics.median(values)


def contention_note(report: dict) -> str | None:
  """A note when the timed steps on a CPU kept fewer cores busy than were pinned."""
  threads = report["settings"]["threads"]
  if report["settings"]["device"] != "cpu" or not threads:
    return None
  busy = [
    v["threads_busy"]
    for c in report["cases"]
    for v in c["variants"].values()
    if "threads_busy" in v
  ]
  if not busy or _median(busy) >= 0.75 * threads:
    return None
  return (
    f"the timed steps kept a median of {_median(busy):.2f} of the {threads} pinned cores "
    "busy (process CPU time / wall time): other processes held the rest, or the steps "
    "are too small to fill them"
  )


# ---------------------------------------------------------------------------------------------
# Printing and writing.


def describe_phases(res: dict) -> str:
  p = res["phases"]
  parts = [f"import {res['import_s']:.1f} s"] if "import_s" in res else []
  init = "init" if res.get("init_compiled", True) else "init (compiled before)"
  names = (
    ("init_s", init),
    ("lower_s", "lower"),
    ("compile_s", "compile"),
    ("build_s", "build"),
    ("first_step_s", "first step"),
    ("next_warmup_steps_s", "next warm-up steps"),
    ("flop_count_s", "FLOP count"),
  )
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
  return f"{n / 2**30:.2f}" if n else "-"


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
    rows.append(
      (
        v["variant"],
        f"{prep:.1f}",
        f"{first:.2f}" if first else "-",
        f"{w['median']:.3f} ({w['iqr']:.3f})",
        f"{w['min']:.3f}-{w['max']:.3f}",
        f"{c['median']:.3f}",
        f"{v['threads_busy']:.2f}",
        f"{v['examples_per_s']:.2f}",
        _gib(mem["bytes"]) + (f" ({_gib(steady)})" if steady else ""),
        f"{fps / 1e9:.1f}" if fps else "-",
        _fraction(v, gpu),
      )
    )
  return rows


VARIANT_HEADER = (
  "variant",
  "compile/build s",
  "first step s",
  "median s/step (IQR)",
  "min-max s",
  "CPU s/step",
  "cores busy",
  "ex/s",
  "peak mem GiB",
  "model GFLOP/s",
  "of peak",
)


def print_case(case: dict, gpu: bool) -> None:
  rows = [VARIANT_HEADER] + variant_rows(case, gpu)
  if len(rows) > 1:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
      print("  " + "  ".join(v.rjust(w) for v, w in zip(row, widths)))
  if case.get("model_flops_per_step"):
    print(
      f"  model: {case['model_flops_per_step'] / 1e9:.1f} GFLOP/step "
      f"({case['model_flops_source']})"
      + (
        f"; XLA counts {case['xla_flops_over_model_flops']:.2f}x that"
        if case.get("xla_flops_over_model_flops")
        else ""
      )
    )
  if "ratio" in case:
    print(
      f"  JAX / PyTorch throughput: {case['ratio']:.2f}x wall ({case['jax_variant']} vs "
      f"{case['torch_variant']}), {case['ratio_cpu_time']:.2f}x by CPU time"
    )
  if case.get("load_during"):
    print(
      f"  load during timing {case['load_during']['min']:.2f}-{case['load_during']['max']:.2f}",
      flush=True,
    )


def write_markdown(path: str, report: dict) -> None:
  mach, s = report["machine"], report["settings"]
  gpu = s["device"] == "gpu"
  title = "GPU" if gpu else "CPU"
  lines = [
    f"# Training-step throughput: JAX vs PyTorch ({title})",
    "",
    f"`{s['command']}`",
    "",
    f"- CPU: {_common.describe_cpu(mach['cpu'])}",
    f"- device: {s['device']} ({s['device_reason']})"
    + (f", {mach['device_kind']}" if mach.get("device_kind") else ""),
    "- versions: " + ", ".join(f"{k} {v}" for k, v in mach["versions"].items()),
    f"- cores used by each worker: {mach['cores'] or 'not pinned'}; XLA_FLAGS="
    f"`{mach.get('xla_flags') or ''}`; OMP_WAIT_POLICY={s['omp_wait_policy'] or 'unset'}",
    f"- load average {mach['load_start']:.2f} at start, {mach['load_end']:.2f} at end; "
    f"the whole run took {report['total_s'] / 60:.1f} min"
    + (
      f", its workers {report['workers_cpu_s'] / 60:.1f} CPU-min"
      if "workers_cpu_s" in report
      else ""
    ),
    "",
  ]
  peak = report.get("matmul_peak")
  if peak:
    parts = [
      f"{fw} {dtype} {describe_peak(peak[fw][dtype])}"
      for fw in ("jax", "torch")
      if fw in peak
      for dtype in ("f32", "bf16")
    ]
    lines += ["Matmul peak (bounded, in the workers): " + "; ".join(parts) + ".", ""]
  lines += [
    "| size | batch | JAX examples/s | PyTorch examples/s | JAX / PyTorch (wall) | "
    "by CPU time | load |",
    "| --- | --- | --- | --- | --- | --- | --- |",
  ]
  for c in report["cases"]:
    j, t = c.get("jax_examples_per_s"), c.get("torch_examples_per_s")
    load = c.get("load_during")
    lines.append(
      f"| {c['size']} | {c['batch']} | {f'{j:.2f}' if j else '-'} | "
      f"{f'{t:.2f}' if t else '-'} | "
      + (f"**{c['ratio']:.2f}x** | {c['ratio_cpu_time']:.2f}x" if "ratio" in c else "- | -")
      + f" | {_load_range(load)} |"
    )
  lines += [
    "",
    "Per variant (compile/build: JAX lower + compile, PyTorch model build; peak "
    "memory: "
    + ("device peak" if gpu else "the worker's peak RSS (steady state during the timed steps)")
    + "; of peak: model FLOP/s over the matmul peak "
    "of the same dtype" + (", MFU over the GPU's dense bf16 peak" if gpu else "") + "):",
    "",
    "| size | batch | " + " | ".join(VARIANT_HEADER) + " | load |",
    "| --- " * (len(VARIANT_HEADER) + 3) + "|",
  ]
  for c in report["cases"]:
    load = c.get("load_during")
    for row in variant_rows(c, gpu):
      lines.append(
        f"| {c['size']} | {c['batch']} | " + " | ".join(row) + f" | {_load_range(load)} |"
      )
  lines += ["", "Start-up phases (s):", ""]
  for c in report["cases"]:
    for v in c["variants"].values():
      lines.append(f"- {c['size']} {c['batch']}, {v['variant']}: {describe_phases(v)}")
  lines.append("")
  for c in report["cases"]:
    if c.get("model_flops_per_step"):
      lines.append(
        f"- {c['size']} (batch {c['batch']}): {c['model_flops_per_step'] / 1e9:.1f} "
        f"GFLOP/step ({c['model_flops_source']})"
        + (
          f", XLA counts {c['xla_flops_over_model_flops']:.2f}x that"
          if c.get("xla_flops_over_model_flops")
          else ""
        )
        + f"; {c['steps']} timed steps per variant in {c['rounds']} rounds."
      )
  if report["failures"]:
    lines += ["", "## Failures", ""]
    lines += [f"- {f['summary']}" for f in report["failures"]]
  if report["notes"]:
    lines += ["", "Notes:", ""] + [f"- {n}" for n in report["notes"]]
  lines += [
    "",
    "Timings on a shared machine move with the load; CPU time is the steadier "
    "measure there. Each framework ran in its own process, pinned to the same cores, "
    "timed in alternating rounds.",
    "",
  ]
  with open(path, "w") as f:
    f.write("\n".join(lines))
