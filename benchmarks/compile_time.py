"""Where the train step's compile time goes: lowering, XLA compile, and what the program holds.

  python benchmarks/compile_time.py                          # paper size, batch 8
  python benchmarks/compile_time.py --size tiny --batch 32   # the tests' program
  python benchmarks/compile_time.py --dropout 0              # the same model without dropout
  python benchmarks/compile_time.py --option xla_backend_optimization_level=1 \
      --option xla_llvm_disable_expensive_passes=true        # per-compile XLA options

Compiles `mopoe_jax.training.step.train_step` for abstract inputs (no state is initialised, nothing
runs), with the XLA flags main.py uses, `--repeats` times in this process (each from a fresh
jax.jit, the persistent cache off), and prints per compile the lowering time and the compile's
wall and process CPU time (XLA compiles on several threads), then what the optimized program
contains: instructions, fusions, copies, while loops (JAX's threefry draws are loops on the
CPU), and the model parts with the most instructions (from the HLO's op_name metadata).

Comparing two variants: run them alternately, each in its own process, a few times. On a shared
2-core VM the same program's compile time drifted by 20% within an hour, and a second compile
in one process ran ~20% slower than the first (benchmarks/README.md, "Compile time (CPU)").
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import re
import sys
import time

if __package__ in (None, ""):
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks import _common  # noqa: E402  pylint: disable=g-import-not-at-top

_OP = re.compile(r"([a-z][a-z0-9-]*)\(")
_NAME = re.compile(r'op_name="([^"]*)"')


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", default="paper", choices=("paper", "synthetic", "tiny"))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--vocab", type=int, default=2900, help="paper size only (others: 64)")
  parser.add_argument("--dropout", type=float, default=None, help="override model.dropout")
  parser.add_argument("--conv-impl", default=None, help="override model.conv_impl")
  parser.add_argument("--threads", type=int, default=2, help="pin to this many cores")
  parser.add_argument("--repeats", type=_positive, default=1)
  parser.add_argument(
    "--option",
    action="append",
    default=[],
    type=_name_value,
    help="an XLA compile option NAME=VALUE (repeatable)",
  )
  parser.add_argument("--top", type=int, default=12, help="model parts to list")
  return parser.parse_args(argv)


def _positive(text: str) -> int:
  if not text.isdigit() or int(text) < 1:
    raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
  return int(text)


def _name_value(text: str) -> tuple[str, str]:
  name, eq, value = text.partition("=")
  if not (name and eq):
    raise argparse.ArgumentTypeError(
      f"expected NAME=VALUE (e.g. xla_backend_optimization_level=1), got {text!r}"
    )
  return name, value


def _option_value(text: str):
  lowered = text.lower()
  if lowered in ("true", "false"):
    return lowered == "true"
  try:
    return int(text)
  except ValueError:
    return text


def _opcode(line: str) -> str | None:
  """The opcode of an HLO instruction line ('%x = f32[2]{0} add(...)', '... = (f32[], u32[])
  while(...)'), or None for other lines."""
  _, eq, rhs = line.partition(" = ")
  if not eq:
    return None
  if rhs.startswith("("):  # a tuple type: skip to its closing parenthesis
    depth = 0
    for i, char in enumerate(rhs):
      depth += {"(": 1, ")": -1}.get(char, 0)
      if depth == 0:
        rhs = rhs[i + 1 :]
        break
  else:
    rhs = rhs.partition(" ")[2]
  match = _OP.match(rhs.lstrip())
  return match.group(1) if match else None


def hlo_summary(text: str, top: int) -> dict:
  """Counts in the text of an optimized HLO module."""
  ops, parts = collections.Counter(), collections.Counter()
  computations = 0
  for line in text.splitlines():
    if line.startswith(("%", "ENTRY")) and line.rstrip().endswith("{"):  # a header
      computations += 1
    opcode = _opcode(line)
    if opcode is None:
      continue
    ops[opcode] += 1
    name = _NAME.search(line)
    if name:  # e.g. jit(train_step)/jvp(MoPoE)/MoPoE.decode/decoders_text/ResidualBlock_3/...
      path = [
        p
        for p in name.group(1).split("/")[1:]
        if not p.startswith(("jvp(", "transpose(", "MoPoE."))
      ]
      parts["/".join(re.sub(r"_\d+$", "_N", p) for p in path[:3])] += 1
  return {
    "instructions": sum(ops.values()),
    "computations": computations,
    "fusions": ops["fusion"],
    "copies": ops["copy"],
    "while_loops": ops["while"],
    "convolutions": ops["convolution"],
    "dots": ops["dot"],
    "top_parts": parts.most_common(top),
  }


def main(argv=None) -> int:
  args = parse_args(argv)
  cores = _common.setup_jax_env(args.threads)
  import jax  # pylint: disable=g-import-not-at-top

  from mopoe_jax.training import step
  from mopoe_jax.vae import model as model_lib  # pylint: disable=g-import-not-at-top

  config = _common.get_config(args.size)
  if args.dropout is not None:
    config.model.dropout = args.dropout
  if args.conv_impl is not None:
    config.model.conv_impl = args.conv_impl
  vocab = args.vocab if args.size == "paper" else 64
  model = model_lib.create_model(config, vocab)
  step_config = step.StepConfig.from_config(config, model, pad_id=_common.PAD_ID)
  state = jax.eval_shape(functools.partial(step.init_state, model, config), jax.random.PRNGKey(0))
  d = config.data
  batch = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
    _common.make_data(d.image_size, d.text_length, args.batch, vocab, 0),
  )
  key = jax.ShapeDtypeStruct((2,), "uint32")
  options = {name: _option_value(value) for name, value in args.option} or None
  print(
    f"{args.size} size, batch {args.batch}, dropout {config.model.dropout}, "
    f"{_common.describe_cpu(_common.cpu_info())}, cores {cores}, jax {jax.__version__}, "
    f"options {options or 'none'}, load {_common.load():.2f}",
    flush=True,
  )
  compiled = None
  for i in range(args.repeats):
    # A fresh jax.jit each time: JAX keeps what a jitted object compiled, and would hand the
    # first compile back.
    jitted = jax.jit(
      functools.partial(step.train_step, model=model, step_config=step_config), donate_argnums=(0,)
    )
    tic = time.perf_counter()
    lowered = jitted.lower(state, batch, key)
    lowering = time.perf_counter() - tic
    tic, cpu = time.perf_counter(), time.process_time()
    compiled = lowered.compile(compiler_options=options)
    wall, cpu = time.perf_counter() - tic, time.process_time() - cpu
    print(
      f"{i + 1}: lowering {lowering:.1f} s; compile {wall:.1f} s wall, {cpu:.1f} s CPU "
      f"({cpu / wall:.2f} cores), load {_common.load():.2f}",
      flush=True,
    )
  summary = hlo_summary(compiled.as_text(), args.top)
  print(
    "optimized program: "
    + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in summary.items() if k != "top_parts")
  )
  print("instructions by model part:")
  for part, count in summary["top_parts"]:
    print(f"  {count:7,d}  {part}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
