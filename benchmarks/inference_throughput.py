"""Throughput of a trained model on user studies: encode and generate (mopoe_jax.inference).

  python benchmarks/inference_throughput.py --workdir runs/synthetic --batch 64 --studies 512

Loads the workdir's model (no dataset, no TensorFlow), makes ``--studies`` complete studies of
random pixels and vocabulary words (throughput does not depend on the content), runs each
operation once to compile, then times ``--repeats`` passes and prints studies/s (median) with
the CPU or device, jax version and load. Reading and writing files is not timed.
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
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="a training run's directory")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--studies", type=int, default=512)
  parser.add_argument("--samples", type=int, default=1, help="generate: samples per study")
  parser.add_argument("--repeats", type=int, default=3)
  return parser.parse_args(argv)


def main(argv=None) -> None:
  args = parse_args(argv)
  _common.setup_jax_env(cpu_only=False)  # whatever device JAX has
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from mopoe_jax import inference  # pylint: disable=g-import-not-at-top

  model = inference.TrainedModel.load(args.workdir, batch_size=args.batch)
  rng = np.random.default_rng(0)
  s, words = model.image_size, model.vocabulary.words[3:]
  studies = [
    inference.Study(
      name=str(i),
      frontal=rng.integers(0, 256, (s, s, 1), np.uint8),
      lateral=rng.integers(0, 256, (s, s, 1), np.uint8),
      report=" ".join(rng.choice(words, size=model.text_length // 2)),
    )
    for i in range(args.studies)
  ]
  operations = {
    "encode": lambda: model.encode(studies),
    "generate": lambda: model.generate(studies, num_samples=args.samples, seed=0),
  }
  device = jax.devices()[0]
  where = (
    _common.describe_cpu(_common.cpu_info()) if device.platform == "cpu" else device.device_kind
  )
  print(
    f"{args.workdir} (step {model.step}, image {s} px, text {model.text_length}, "
    f"vocabulary {len(model.vocabulary):,}), batch {args.batch}, {args.studies} studies; "
    f"{where}; jax {jax.__version__}; load {_common.load():.2f}"
  )
  for name, run in operations.items():
    tic = time.perf_counter()
    run()  # compiles
    first = time.perf_counter() - tic
    times = []
    for _ in range(args.repeats):
      tic = time.perf_counter()
      run()
      times.append(time.perf_counter() - tic)
    median = float(np.median(times))
    print(
      f"{name:9s} {args.studies / median:9.1f} studies/s (median of {args.repeats}; "
      f"first call with compiling {first:.1f} s)"
    )
  print(f"load at the end {_common.load():.2f}")


if __name__ == "__main__":
  main()
