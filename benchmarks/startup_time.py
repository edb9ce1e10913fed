"""Time from process start to the first training step done, through the real training loop.

  python benchmarks/startup_time.py                      # paper size, batch 8, cold cache
  python benchmarks/startup_time.py --size synthetic --batch 64
  python benchmarks/startup_time.py --cache-dir /tmp/xla_cache   # run twice: the second start

Runs `mopoe_jax.training.loop.train_and_evaluate` for one step on in-memory random studies (a
`DataSource` built here: no dataset to prepare, no TensorFlow), with the XLA settings main.py
applies, and prints the time of each phase from the loop's own log lines: initialising the
state, lowering and compiling the train step (in a background thread while the rest is set up),
the eval and grid programs, and the first step. By default nothing is cached, as on a first
start; with --cache-dir a second run shows a restart with JAX's persistent compilation cache.
"""

from __future__ import annotations

import argparse
import logging as logging_std
import os
import re
import sys
import tempfile
import time

STARTED = time.perf_counter()

if __package__ in (None, ""):
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks import _common  # noqa: E402  pylint: disable=g-import-not-at-top


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", default="paper", choices=("paper", "synthetic", "tiny"))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--vocab", type=int, default=2900)
  parser.add_argument("--threads", type=int, default=2, help="pin to this many cores")
  parser.add_argument(
    "--cache-dir",
    default=None,
    help="JAX persistent compilation cache (default: none, a first start)",
  )
  return parser.parse_args(argv)


class RandomData:
  """A `mopoe_jax.data.datasource.DataSource` of random studies held in memory."""

  def __init__(self, image_size: int, text_length: int, vocab: int, num_examples: int = 512):
    import numpy as np  # pylint: disable=g-import-not-at-top

    self._np = np
    self.name = f"random/{image_size}px"
    self.vocab = _Vocabulary(vocab)
    self.attribute_names = ()
    self._sizes = (image_size, text_length)
    self._num = num_examples

  def num_examples(self, split: str) -> int:
    del split
    return self._num

  def _batch(self, rows: int, seed: int) -> dict:
    s, t = self._sizes
    batch = _common.make_data(s, t, rows, len(self.vocab), seed)
    batch["labels"] = self._np.zeros((rows, 14), self._np.float32)
    batch["finding"] = self._np.zeros((rows,), self._np.int32)
    return batch

  def train_batches(self, *, global_batch_size: int, seed: int, start_step: int = 0):
    step = start_step
    while True:
      yield self._batch(global_batch_size, seed + step)
      step += 1

  def eval_batches(self, split: str, *, batch_size: int, process_index=None, process_count=None):
    del split, process_index, process_count
    for i in range(2):
      yield dict(self._batch(batch_size, 10_000 + i), valid=self._np.ones((batch_size,), bool))

  def attributes(self, split: str, max_examples=None):
    raise NotImplementedError("random data has no attributes")

  def classifier_batches(self, *, batch_size: int, seed: int, shuffle_buffer_size: int):
    raise NotImplementedError("not needed for training")


class _Vocabulary:
  pad_id = 1

  def __init__(self, size: int):
    self.words = ["<exc>", "<pad>", "<eos>"] + [f"w{i}" for i in range(size - 3)]

  def __len__(self) -> int:
    return len(self.words)

  def decode(self, ids, stop_at_eos: bool = True) -> str:
    del stop_at_eos
    return " ".join(self.words[i] for i in ids)


class _NoWriter:
  def write_scalars(self, step, scalars):
    pass

  def write_images(self, step, images):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    pass


class _Phases(logging_std.Handler):
  """Collects (seconds since process start, message) of the loop's log lines."""

  def __init__(self):
    super().__init__()
    self.lines = []

  def emit(self, record):
    self.lines.append((time.perf_counter() - STARTED, record.getMessage()))


_PATTERNS = (
  ("state initialised", r"Initialised the train state in ([\d.]+) s"),
  (
    "train step lowered + compiled",
    r"Compiled the train step: lowering ([\d.]+) s, "
    r"compiling ([\d.]+) s",
  ),
  ("train step ready", r"train step was ready ([\d.]+) s after its compile started"),
  ("first step done", r"First step done ([\d.]+) s after training started"),
)


def main(argv=None) -> int:
  args = parse_args(argv)
  cores = _common.setup_jax_env(args.threads)
  from absl import logging  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  if args.cache_dir:
    from mopoe_jax.platform import runtime  # pylint: disable=g-import-not-at-top

    runtime.enable_compilation_cache(args.cache_dir)
  from mopoe_jax.training import loop as train  # pylint: disable=g-import-not-at-top

  phases = _Phases()
  logging.get_absl_logger().addHandler(phases)
  logging.set_verbosity(logging.INFO)
  # The loop's INFO lines go to `phases` only; the console shows warnings and the summary.
  for handler in [logging.get_absl_handler(), *logging_std.getLogger().handlers]:
    handler.setLevel(logging_std.WARNING)
  imported = time.perf_counter() - STARTED

  config = _common.get_config(args.size)
  config.train.batch_size = args.batch
  config.train.num_steps = 1
  config.train.eval_batches = 1
  config.train.image_grid_studies = min(config.train.image_grid_studies, args.batch)
  data = RandomData(config.data.image_size, config.data.text_length, args.vocab)
  print(
    f"{args.size} size, batch {args.batch}, {_common.describe_cpu(_common.cpu_info())}, "
    f"cores {cores}, jax {jax.__version__}, load {_common.load():.2f}; imports done at "
    f"{imported:.1f} s",
    flush=True,
  )
  with tempfile.TemporaryDirectory() as workdir:
    train.train_and_evaluate(config, workdir, data, _NoWriter())
  for name, pattern in _PATTERNS:
    for at, message in phases.lines:
      match = re.search(pattern, message)
      if match:
        print(f"{name:32s} at {at:6.1f} s  ({', '.join(match.groups())} s)", flush=True)
        break
  print(
    f"whole run (one step and one evaluation) {time.perf_counter() - STARTED:.1f} s, "
    f"load {_common.load():.2f}",
    flush=True,
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
