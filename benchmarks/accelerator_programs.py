"""What a GPU or TPU would be given: the programs lowered for them on this machine.

  python benchmarks/accelerator_programs.py                        # paper size, cuda and tpu
  python benchmarks/accelerator_programs.py --size tiny --platforms cuda,tpu,cpu --batch 8

Lowers the init, the train step and the eval step of the config (`benchmarks.costing.lowering`,
``jax.export`` for each platform: no accelerator needed) with ``conv_impl``/``compute_dtype``
'auto' resolved for the target, and prints per program what it holds: convolutions (how many
take bfloat16 operands), matrix products, loops, custom calls (kernels of one backend: none
expected) and the size of its StableHLO. Nothing is compiled or run: the target's compiler is
not here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks import _common  # noqa: E402  pylint: disable=g-import-not-at-top


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", choices=("paper", "synthetic", "tiny"), default="paper")
  parser.add_argument(
    "--platforms", default="cuda,tpu", help="comma-separated: cuda, rocm, tpu, cpu"
  )
  parser.add_argument(
    "--batch",
    type=int,
    default=25,
    help="studies per device and step (the paper's 200 over 8 devices: 25)",
  )
  parser.add_argument("--vocab", type=int, default=2900)
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  _common.setup_jax_env(None)
  from benchmarks.costing import lowering  # pylint: disable=g-import-not-at-top

  config = _common.get_config(args.size)
  vocab = args.vocab if args.size == "paper" else 64
  header = (
    "platform",
    "program",
    "lowered in s",
    "convolutions (bf16)",
    "dot_generals",
    "while loops",
    "custom calls",
    "StableHLO MB",
  )
  rows = []
  for platform in args.platforms.split(","):
    tic = time.perf_counter()
    programs = lowering.export_programs(config, vocab, platform.strip(), args.batch)
    seconds = time.perf_counter() - tic
    for name, exported in programs.items():
      d = lowering.describe(exported)
      rows.append(
        (
          platform,
          name,
          f"{seconds:.1f}",
          f"{d['convolutions']} ({d['bf16_convolutions']})",
          str(d["dot_generals"]),
          str(d["while_loops"]),
          ", ".join(d["custom_calls"]) or "none",
          f"{d['bytes'] / 1e6:.1f}",
        )
      )
  print(
    f"{args.size} size, {args.batch} studies per device; model.conv_impl="
    f"{config.model.conv_impl!r}, model.compute_dtype={config.model.compute_dtype!r} "
    "resolved per platform"
  )
  print("| " + " | ".join(header) + " |")
  print("|" + " --- |" * len(header))
  for row in rows:
    print("| " + " | ".join(row) + " |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
