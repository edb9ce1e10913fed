"""What a TPU slice or NVIDIA GPUs would cost, before they are booked: the step compiled for them.

  pip install -e '.[tpu]'                        # libtpu: compiles for TPUs on any machine
  pip install 'jax[cuda12-local]'                # the GPU compiler (the test extra has it)
  python benchmarks/accelerator_cost.py          # paper config: v5e:2x4, v4:2x2x1, H100, H200
  python benchmarks/accelerator_cost.py --targets h200:1,v5e:2x4 --batch 25,50 --json out.json

A target is a TPU slice ('v5e:2x4', 'v4:2x2x1', 'v5p:2x2x1', 'v6e:2x2') or GPUs of one machine
('h100:8', 'h200:1'). Per target and per-device batch (default: the config's global batch over
the devices, and twice that): the memory the step needs per device against the device's, FLOPs,
HBM bytes per device and step (the optimized program's HBM-resident buffers,
`benchmarks.costing.hlo_traffic`) beside XLA's "bytes accessed", the roofline time per step from
the former and that of the paper's training (150 epochs of 61,747 studies at the global batch),
the collectives' bytes and their time over the interconnect, the largest per-device batch that
fits (a straight line through the first two batches' memory), and then, per target at its first
batch, where the HBM bytes go. Each compile of the paper's step takes minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

if __package__ in (None, ""):
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks import _common  # noqa: E402  pylint: disable=g-import-not-at-top

PAPER_STUDIES, PAPER_EPOCHS = 61_747, 150  # the paper's train split and epochs
GPU_KINDS = ("h100", "h200")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", choices=("paper", "synthetic", "tiny"), default="paper")
  parser.add_argument("--targets", default="v5e:2x4,v4:2x2x1,h100:1,h100:8,h200:1,h200:8")
  parser.add_argument(
    "--batch",
    default=None,
    help="per-device batches, comma-separated (default: the config's global batch over the "
    "devices, and twice that)",
  )
  parser.add_argument("--vocab", type=int, default=2900)
  parser.add_argument("--json", default=None, help="also write every figure to this file")
  parser.add_argument(
    "--save_hlo", default=None, help="a folder: write each optimized program's text there"
  )
  parser.add_argument(
    "--recount",
    action="store_true",
    help="compile nothing: count the programs of --save_hlo again and update --json's figures",
  )
  parser.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="FIELD=VALUE",
    help="override a config field, e.g. --set train.shard_optimizer=false (repeatable)",
  )
  return parser.parse_args(argv)


def apply_overrides(config, overrides) -> None:
  """``section.field=value`` settings, each read as the command line reads ``--config.<field>``
  (`configs.recommended.parse_value`)."""
  from configs import recommended  # pylint: disable=g-import-not-at-top

  for item in overrides:
    name, _, text = item.partition("=")
    *sections, field = name.split(".")
    node = config
    for section in sections:
      node = node[section]
    node[field] = recommended.parse_value(config, name, text)


def _gib(n: float) -> str:
  return f"{n / 2**30:.2f}"


def _devices(target: str) -> int:
  kind, _, shape = target.partition(":")
  if kind in GPU_KINDS:
    return int(shape)
  count = 1
  for d in shape.split("x"):
    count *= int(d)
  return count


def versions() -> str:
  from importlib import metadata  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top

  out = [f"jax {jax.__version__}"]
  for package in ("libtpu", "jax-cuda12-plugin"):
    try:
      out.append(f"{package} {metadata.version(package)}")
    except metadata.PackageNotFoundError:
      pass
  return ", ".join(out)


def cost(config, vocab: int, target: str, per_device_batch: int, hlo_path=None) -> dict:
  kind, _, shape = target.partition(":")
  if kind in GPU_KINDS:
    if importlib.util.find_spec("jax_plugins.xla_cuda12") is None:
      raise SystemExit(
        f"{target}: JAX's CUDA plugin is not installed (pip install 'jax[cuda12-local]', "
        "or pip install -e '.[test]')."
      )
    from benchmarks.costing import gpu_cost  # pylint: disable=g-import-not-at-top

    return gpu_cost.cost_step(config, vocab, kind, int(shape), per_device_batch, hlo_path)
  from benchmarks.costing import tpu_cost  # pylint: disable=g-import-not-at-top

  return tpu_cost.cost_step(config, vocab, target, per_device_batch, hlo_path)


HEADER = (
  "target",
  "devices",
  "batch per device (global)",
  "memory GiB per device (of)",
  "GFLOP per device",
  "HBM GiB per device",
  "XLA bytes accessed GiB",
  "roofline ms/step (bound by)",
  "collectives MiB (ms)",
  "paper training min",
  "largest batch per device that fits (est.)",
  "compile s",
)


def row(r: dict, largest) -> list[str]:
  steps = PAPER_EPOCHS * (PAPER_STUDIES // r["global_batch"])
  xla = r["xla_bytes_accessed"]
  collective = f"{r['collective_bytes'] / 2**20:.0f}"
  if r["collective_seconds"] is not None:
    collective += f" ({1e3 * r['collective_seconds']:.2f})"
  return [
    r["target"],
    str(r["devices"]),
    f"{r['per_device_batch']} ({r['global_batch']})",
    f"{_gib(r['bytes_needed'])} ({_gib(r['device_memory_bytes'])})" + ("" if r["fits"] else " NO"),
    f"{r['flops'] / 1e9:.1f}",
    _gib(r["hbm_bytes"]),
    _gib(xla) if xla is not None else "-",
    f"{1e3 * r['roofline_step_seconds']:.2f} ({r['bound_by']})",
    collective,
    f"{steps * r['roofline_step_seconds'] / 60:.1f}",
    str(largest) if largest is not None else "-",
    f"{r['compile_seconds']:.0f}",
  ]


def groups_table(results: list[dict]) -> list[str]:
  """Markdown rows: per group, GiB per device and step for each target (its first batch)."""
  groups = []
  for r in results:
    groups += [g for g in r["hbm_groups"] if g not in groups]
  lines = [
    "| where the HBM bytes go | "
    + " | ".join(f"{r['target']} @ {r['per_device_batch']}" for r in results)
    + " |",
    "|" + " --- |" * (len(results) + 1),
  ]
  for g in groups:
    cells = []
    for r in results:
      b = r["hbm_groups"].get(g, 0)
      cells.append(f"{b / 2**30:.3f} ({100 * b / r['hbm_bytes']:.0f}%)")
    lines.append(f"| {g} | " + " | ".join(cells) + " |")
  lines.append("| **total** | " + " | ".join(f"**{_gib(r['hbm_bytes'])}**" for r in results) + " |")
  return lines


def hlo_file(folder: str, target: str, per_device_batch: int) -> str:
  return os.path.join(folder, f"{target.replace(':', '_')}_{per_device_batch}.hlo.txt")


def _finish_target(rows: list[dict], step_cost) -> None:
  """Prints a target's rows with the largest batch that fits (a line through the first two)."""
  largest = None
  if len(rows) > 1:
    largest = step_cost.largest_batch_estimate(rows[0], rows[1], rows[0]["device_memory_bytes"])
  for r in rows:
    r["largest_batch_estimate"] = largest
    print("| " + " | ".join(row(r, largest)) + " |", flush=True)


def device_figures(target: str) -> dict:
  """The peak, HBM and link bandwidth the roofline takes for a target's devices."""
  kind, _, shape = target.replace(" x", ":").partition(":")
  if kind in GPU_KINDS:
    from benchmarks.costing import gpu_targets  # pylint: disable=g-import-not-at-top

    spec = gpu_targets.GPUS[kind]
    return dict(
      peak_flops=spec.peak_bf16_flops,
      hbm_bytes_per_second=spec.hbm_bytes_per_second,
      link_bytes_per_second=spec.link_bytes_per_second,
    )
  from benchmarks.costing import tpu_cost  # pylint: disable=g-import-not-at-top

  chip = tpu_cost.TPU_CHIPS[kind]
  return dict(
    peak_flops=tpu_cost.peak_flops(kind),
    hbm_bytes_per_second=chip.hbm_bytes_per_second,
    link_bytes_per_second=chip.link_bytes_per_second,
  )


def recount(args, step_cost) -> int:
  """The figures of ``--json`` with the programs saved in ``--save_hlo`` counted again."""
  with open(args.json) as f:
    everything = json.load(f)
  print(f"counted again from {args.save_hlo} ({versions()})")
  print("| " + " | ".join(HEADER) + " |")
  print("|" + " --- |" * len(HEADER), flush=True)
  by_target = {}
  for i, r in enumerate(everything):
    for key, value in device_figures(r["target"]).items():
      r.setdefault(key, value)  # figures written before they were recorded
    with open(hlo_file(args.save_hlo, r["target"], r["per_device_batch"])) as f:
      everything[i] = step_cost.traffic_figures(r, f.read())
    by_target.setdefault(r["target"], []).append(everything[i])
  for rows in by_target.values():
    _finish_target(rows, step_cost)
  with open(args.json, "w") as f:
    json.dump(everything, f, indent=1)
  print()
  print("\n".join(groups_table([rows[0] for rows in by_target.values()])))
  return 0


def main(argv=None) -> int:
  args = parse_args(argv)
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no TPU here: do not ask a metadata server
  # Compiling only: libtpu's lock (one process per TPU host) need not keep out another compile.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  _common.setup_jax_env(None)  # JAX_PLATFORMS=cpu: the CUDA plugin is then not started
  from benchmarks.costing import step_cost  # pylint: disable=g-import-not-at-top

  if args.recount:
    if not (args.json and args.save_hlo):
      raise SystemExit("--recount needs --json (the figures) and --save_hlo (the programs).")
    return recount(args, step_cost)
  config = _common.get_config(args.size)
  apply_overrides(config, args.set)
  vocab = args.vocab if args.size == "paper" else 64
  overrides = "".join(f" --set {s}" for s in args.set)
  cpu = _common.describe_cpu(_common.cpu_info())
  print(f"{args.size} size{overrides}; compiled on {cpu}; {versions()}", flush=True)
  print("| " + " | ".join(HEADER) + " |")
  print("|" + " --- |" * len(HEADER), flush=True)
  everything, first = [], []
  for target in (t.strip() for t in args.targets.split(",")):
    n = _devices(target)
    if args.batch:
      batches = [int(b) for b in args.batch.split(",")]
    else:
      per_device = config.train.batch_size // n
      batches = [per_device, 2 * per_device]
    rows = []
    for b in batches:
      path = hlo_file(args.save_hlo, target, b) if args.save_hlo else None
      if path:
        os.makedirs(args.save_hlo, exist_ok=True)
      r = cost(config, vocab, target, b, path)
      r["target"] = target
      rows.append(r)
      everything.append(r)
      if args.json:
        with open(args.json, "w") as f:
          json.dump(everything, f, indent=1)
    _finish_target(rows, step_cost)
    first.append(rows[0])
  if args.json:
    with open(args.json, "w") as f:
      json.dump(everything, f, indent=1)
  print()
  print("\n".join(groups_table(first)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
