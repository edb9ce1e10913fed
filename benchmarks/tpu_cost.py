"""What a Cloud TPU slice would cost, before it is booked: the step compiled for it here.

  pip install -e '.[tpu]'                # libtpu: compiles for TPUs on any machine
  python benchmarks/tpu_cost.py          # the paper's config on v5e:2x4 and v4:2x2x1
  python benchmarks/tpu_cost.py --slices v5e:2x4,v5p:2x2x1,v6e:2x2 --batch 25,50

Per slice and per-chip batch (`benchmarks.costing.tpu_cost`): the memory the step needs per chip
against the chip's HBM, FLOPs and HBM bytes per chip and step, the roofline time per step and of the
paper's whole training (150 epochs of 61,747 studies at the global batch), and the largest
per-chip batch that fits (a straight line through the first two batches' memory). Each compile
of the paper's step takes minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks import _common  # noqa: E402  pylint: disable=g-import-not-at-top

PAPER_STUDIES, PAPER_EPOCHS = 61_747, 150  # the paper's train split and epochs


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", choices=("paper", "synthetic", "tiny"), default="paper")
  parser.add_argument("--slices", default="v5e:2x4,v4:2x2x1")
  parser.add_argument(
    "--batch",
    default="25,50",
    help="per-chip batches, comma-separated (25: the paper's 200 on 8 chips)",
  )
  parser.add_argument("--vocab", type=int, default=2900)
  return parser.parse_args(argv)


def _gib(n: float) -> str:
  return f"{n / 2**30:.2f}"


def main(argv=None) -> int:
  args = parse_args(argv)
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no TPU here: do not ask a metadata server
  _common.setup_jax_env(None)
  from benchmarks.costing import tpu_cost  # pylint: disable=g-import-not-at-top

  config = _common.get_config(args.size)
  vocab = args.vocab if args.size == "paper" else 64
  batches = [int(b) for b in args.batch.split(",")]
  print(f"{args.size} size; {_common.cpu_info().get('model', 'CPU')} compiling")
  header = (
    "slice",
    "chips",
    "batch per chip (global)",
    "memory GiB per chip (HBM)",
    "GFLOP per chip",
    "HBM GiB per chip",
    "roofline ms/step (bound by)",
    "paper training h",
    "largest batch per chip that fits (est.)",
    "compile s",
  )
  print("| " + " | ".join(header) + " |")
  print("|" + " --- |" * len(header))
  for name in args.slices.split(","):
    rows = [tpu_cost.cost_step(config, vocab, name.strip(), b) for b in batches]
    largest = tpu_cost.largest_batch_estimate(rows[0], rows[1]) if len(rows) > 1 else None
    for r in rows:
      steps = PAPER_EPOCHS * (PAPER_STUDIES // r["global_batch"])
      print(
        "| "
        + " | ".join(
          [
            r["slice"],
            str(r["chips"]),
            f"{r['per_chip_batch']} ({r['global_batch']})",
            f"{_gib(r['bytes_needed'])} ({_gib(r['hbm_bytes'])})" + ("" if r["fits"] else " NO"),
            f"{r['flops'] / 1e9:.1f}",
            _gib(r["bytes_accessed"]),
            f"{1e3 * r['roofline_step_seconds']:.1f} ({r['bound_by']})",
            f"{steps * r['roofline_step_seconds'] / 3600:.2f}",
            str(largest) if largest is not None else "-",
            f"{r['compile_seconds']:.0f}",
          ]
        )
        + " |",
        flush=True,
      )
  return 0


if __name__ == "__main__":
  sys.exit(main())
