"""Trains and/or evaluates MoPoE on chest X-ray studies.

  python main.py --config=configs/synthetic.py --workdir=runs/synthetic
  python main.py --config=configs/synthetic.py --workdir=runs/synthetic --mode=evaluate

On several hosts, the same command on each with --config.train.multihost=true
(docs/training.md#training-on-several-hosts). Every config field can be overridden, e.g.
--config.train.batch_size=128.
"""

import logging as logging_std
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard logs and results.")
flags.DEFINE_enum("mode", "train_and_evaluate", ["train", "evaluate", "train_and_evaluate"],
                  "What to run.")
config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(logging_std.Filter):
  """Drops the INFO chatter of Orbax's background threads; warnings and errors still pass."""

  def filter(self, record):
    return record.levelno >= logging_std.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  from mopoe_jax import runtime  # pylint: disable=g-import-not-at-top
  logging.info("XLA_FLAGS=%s", runtime.apply_defaults())
  # TensorFlow (tf.data) must not take the accelerators that JAX uses.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from input_pipeline import data as data_lib  # pylint: disable=g-import-not-at-top
  from mopoe_jax import evaluate, train  # pylint: disable=g-import-not-at-top

  config = FLAGS.config
  if config.train.multihost:
    runtime.initialize_distributed(config.train)
  workdir = os.path.abspath(FLAGS.workdir)
  os.makedirs(workdir, exist_ok=True)
  logging.info("Workdir: %s", workdir)
  if config.train.compilation_cache:
    runtime.enable_compilation_cache(config.train.compilation_cache_dir or
                                     os.path.join(workdir, "xla_cache"))
  data = data_lib.load(config.data)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if FLAGS.mode in ("train", "train_and_evaluate"):
    try:
      train.train_and_evaluate(config, workdir, data, writer)
    except train.Preempted as e:
      logging.warning("%s", e)
      sys.exit(143)  # 128 + SIGTERM: the scheduler sees a terminated job
    logging.info("Checkpoints: %s", os.path.join(workdir, "checkpoints"))
    logging.info("TensorBoard logs: %s (tensorboard --logdir %s)", workdir, workdir)
  if FLAGS.mode in ("evaluate", "train_and_evaluate"):
    evaluate.evaluate(config, workdir, data, writer)
  writer.close()


if __name__ == "__main__":
  app.run(main)
