"""Throughput of the training input pipeline (tfds -> decoded numpy batches), host only.

  python benchmarks/pipeline_throughput.py --dataset=synthetic_cxr/small --batch_size=128

Builds the dataset first if it is not prepared yet (synthetic_cxr renders it; mimic_cxr needs
--manual_dir). Prints the time to the first batch of a fresh iterator and of one resumed in the
middle of a later epoch, then batches/s and examples/s over --num_batches batches after
--warmup_batches, and the CPU time this process spent on them (all of tf.data's threads):
examples per CPU-second is what one core delivers, the figure that sizes a host's cores to an
accelerator's step rate (on a shared machine it is also steadier than the wall clock). The
numbers are per process: a multi-host run feeds each host this fast.
"""

import os
import time

from absl import app, flags
import ml_collections

from input_pipeline import batching

_DATASET = flags.DEFINE_string("dataset", "synthetic_cxr/small", "tfds name of the dataset.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir (None: the tfds default).")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Manually downloaded files (mimic_cxr).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Global batch size.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 200, "Batches to time.")
_WARMUP_BATCHES = flags.DEFINE_integer("warmup_batches", 10, "Batches before timing starts.")
_REQUIRE_COMPLETE = flags.DEFINE_bool(
  "require_complete", False, "Keep only studies with all three modalities."
)
_SHUFFLE_BUFFER_SIZE = flags.DEFINE_integer(
  "shuffle_buffer_size", 10_000, "Shuffle buffer of encoded studies."
)
_SEED = flags.DEFINE_integer("seed", 0, "Shuffle seed.")


def main(argv):
  del argv
  data_config = ml_collections.ConfigDict(
    {
      "name": _DATASET.value,
      "data_dir": _DATA_DIR.value,
      "manual_dir": _MANUAL_DIR.value,
      "train_split": "train",
      "require_complete": _REQUIRE_COMPLETE.value,
      "shuffle_buffer_size": _SHUFFLE_BUFFER_SIZE.value,
      "prefetch": 2,
    }
  )
  builder = batching.get_builder(data_config)
  n = batching.num_examples(builder, "train", require_complete=_REQUIRE_COMPLETE.value)
  steps_per_epoch = n // _BATCH_SIZE.value
  print(
    f"{_DATASET.value}: {n} training studies, batch {_BATCH_SIZE.value}, "
    f"{steps_per_epoch} steps per epoch"
  )

  def first_batch_seconds(start_step):
    start = time.perf_counter()
    iterator = batching.train_iterator(
      builder,
      data_config,
      global_batch_size=_BATCH_SIZE.value,
      seed=_SEED.value,
      start_step=start_step,
    )
    next(iterator)
    return time.perf_counter() - start, iterator

  fresh_s, iterator = first_batch_seconds(0)
  resume_step = 3 * steps_per_epoch + steps_per_epoch // 2
  resume_s, _ = first_batch_seconds(resume_step)
  print(
    f"first batch: {fresh_s:.2f} s fresh, {resume_s:.2f} s resumed at step {resume_step} "
    "(mid-epoch: reads half an epoch of encoded studies)"
  )

  for _ in range(_WARMUP_BATCHES.value):
    next(iterator)
  start, cpu_start = time.perf_counter(), time.process_time()
  for _ in range(_NUM_BATCHES.value):
    batch = next(iterator)
  seconds = time.perf_counter() - start
  cpu_seconds = time.process_time() - cpu_start  # every thread of this process (tf.data's)
  batches_per_s = _NUM_BATCHES.value / seconds
  print(
    f"frontal {batch['frontal'].shape} {batch['frontal'].dtype}, "
    f"text {batch['text'].shape} {batch['text'].dtype}"
  )
  print(
    f"{batches_per_s:.1f} batches/s, {batches_per_s * _BATCH_SIZE.value:.0f} examples/s "
    f"({_NUM_BATCHES.value} batches of {_BATCH_SIZE.value} in {seconds:.2f} s)"
  )
  examples = _NUM_BATCHES.value * _BATCH_SIZE.value
  print(
    f"{cpu_seconds:.2f} CPU-s ({cpu_seconds / seconds:.2f} cores busy): "
    f"{examples / cpu_seconds:.0f} examples per CPU-second, what one core delivers where the "
    f"pipeline scales over cores; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
  )


if __name__ == "__main__":
  app.run(main)
