"""Trains and/or evaluates MoPoE on chest X-ray studies; uses a trained model on your studies.

  python main.py --config=configs/synthetic.py --workdir=runs/synthetic
  python main.py --config=configs/synthetic.py --workdir=runs/synthetic --mode=evaluate
  python main.py --workdir=runs/synthetic --mode=generate --input=my_studies --output=out

--mode=generate and --mode=encode read the run's model from its workdir alone (no --config, no
dataset, no TensorFlow): every folder of --input is a study (frontal.png, lateral.png and/or
report.txt or an Open-i report.xml); README, "Use a trained model".

On several hosts, the same command on each: under SLURM, Open MPI or on a Cloud TPU slice
jax.distributed starts by itself; elsewhere add the coordinator's address, the number of
processes and each one's id (docs/training.md#training-on-several-hosts). Every config field
can be overridden, e.g. --config.train.batch_size=128.
"""

import gc
import logging as logging_std
import sys

from absl import app, flags, logging
from ml_collections import config_flags

# Python's cyclic garbage collector runs a young collection every 700 net allocations of
# containers, and now and then a full one over every object of TensorFlow, JAX and their
# traces (about 0.2 s each). Importing and tracing allocate millions: at the default a training
# start spent 2.2 CPU-s collecting (8 full collections), at 10,000 it spends 0.6 and none is
# full (tiny config, warm cache, 2-core AMD EPYC, Python 3.12). Garbage is still collected, in
# larger batches; the training loop's own steps allocate little.
gc.set_threshold(10_000, 10, 10)

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard logs and results.")
flags.DEFINE_enum(
  "mode",
  "train_and_evaluate",
  ["train", "evaluate", "train_and_evaluate", "generate", "encode"],
  "What to run.",
)
config_flags.DEFINE_config_file(
  "config", None, "Training configuration file (train and evaluate modes).", lock_config=True
)
flags.DEFINE_string("input", None, "generate/encode: a folder with one folder per study.")
flags.DEFINE_string("output", None, "generate/encode: a new (or empty) folder for the outputs.")
flags.DEFINE_string(
  "given",
  None,
  "generate/encode: the subset to condition on, e.g. "
  "'frontal' or 'lateral+text' (default: all of each study's modalities).",
)
flags.DEFINE_integer("samples", 1, "generate: samples per study.")
flags.DEFINE_integer("seed", 0, "generate: the seed of the samples.")
flags.DEFINE_integer(
  "step", None, "generate/encode: the checkpoint step (default: the newest that restores)."
)
flags.mark_flags_as_required(["workdir"])


class _QuietLibraries(logging_std.Filter):
  """Drops the INFO chatter of Orbax's background threads; warnings and errors still pass."""

  def filter(self, record):
    return record.levelno >= logging_std.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  from mopoe_jax.platform import runtime  # pylint: disable=g-import-not-at-top

  logging.info("XLA_FLAGS=%s", runtime.apply_defaults())
  if FLAGS.mode in ("generate", "encode"):
    _use_trained_model()
    return
  if FLAGS.config is None:
    raise app.UsageError(f"--mode={FLAGS.mode} needs --config.")
  # A finished run is recognised before anything loads; with several processes each must decide
  # alike, which needs jax.distributed: they go the whole way (training and evaluation then find
  # nothing left but the evaluation).
  if (
    FLAGS.mode == "train_and_evaluate"
    and runtime.several_processes(FLAGS.config.train) is None
    and _finished()
  ):
    return
  # TensorFlow (tf.data) must not take the accelerators that JAX uses.
  from input_pipeline import tf_import  # pylint: disable=g-import-not-at-top

  tf_import.tf.config.set_visible_devices([], "GPU")
  metric_writers = tf_import.metric_writers()  # clu, without Keras
  import jax  # pylint: disable=g-import-not-at-top

  from input_pipeline import tfds_source  # pylint: disable=g-import-not-at-top
  from mopoe_jax.evaluation import evaluate, finished  # pylint: disable=g-import-not-at-top
  from mopoe_jax.platform import paths
  from mopoe_jax.training import loop as train

  config = FLAGS.config
  if FLAGS.mode == "train_and_evaluate":
    evaluate.check_eval_config(config)  # a bad eval setting fails now, not after the training
  runtime.start_processes(config.train)  # jax.distributed when several processes make the run
  workdir = paths.makedirs(FLAGS.workdir)  # a local folder or a URI (gs://bucket/run)
  logging.info("Workdir: %s", workdir)
  if config.train.compilation_cache:
    runtime.enable_compilation_cache(
      config.train.compilation_cache_dir or paths.join(workdir, "xla_cache")
    )
  data = tfds_source.load(config.data)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if FLAGS.mode in ("train", "train_and_evaluate"):
    try:
      train.train_and_evaluate(config, workdir, data, writer)
    except train.Preempted as e:
      logging.warning("%s", e)
      sys.exit(143)  # 128 + SIGTERM: the scheduler sees a terminated job
    logging.info("Checkpoints: %s", paths.join(workdir, "checkpoints"))
    logging.info("TensorBoard logs: %s (tensorboard --logdir %s)", workdir, workdir)
  if FLAGS.mode in ("evaluate", "train_and_evaluate"):
    results = evaluate.evaluate(config, workdir, data, writer)
    if FLAGS.mode == "train_and_evaluate" and jax.process_index() == 0 and results:
      finished.mark_finished(config, workdir, results["settings"]["step"])
  writer.close()


def _finished() -> bool:
  """True (and says so) when the workdir holds this very run, trained and evaluated: a rerun of
  the README's command then exits in seconds, before TensorFlow or the data are loaded."""
  from mopoe_jax.evaluation import finished  # pylint: disable=g-import-not-at-top
  from mopoe_jax.platform import paths  # pylint: disable=g-import-not-at-top

  step = finished.finished_step(FLAGS.config, FLAGS.workdir)
  if step is None:
    return False
  workdir = paths.resolve(FLAGS.workdir)
  logging.info(
    "This run is finished: trained to step %d and evaluated there with this config; nothing "
    "to do. Results: %s; checkpoints: %s. To evaluate again: --mode=evaluate; to train "
    "further, raise --config.train.num_epochs (or num_steps).",
    step,
    paths.join(workdir, "eval", "report.md"),
    paths.join(workdir, "checkpoints"),
  )
  return True


def _use_trained_model():
  """--mode=generate / --mode=encode: no TensorFlow, no dataset, the workdir alone."""
  if not FLAGS.input or not FLAGS.output:
    raise app.UsageError(f"--mode={FLAGS.mode} needs --input=FOLDER and --output=FOLDER.")
  from mopoe_jax import inference  # pylint: disable=g-import-not-at-top
  from mopoe_jax.platform import paths, runtime

  cache = paths.join(paths.resolve(FLAGS.workdir), "xla_cache")
  if paths.exists(cache):  # the run's compilation cache: a second call compiles nothing
    runtime.enable_compilation_cache(cache)
  try:
    inference.check_output_folder(FLAGS.output)  # before anything is loaded
    model = inference.TrainedModel.load(FLAGS.workdir, step=FLAGS.step)
    summary = inference.run_folder(
      model,
      FLAGS.input,
      FLAGS.output,
      mode=FLAGS.mode,
      given=FLAGS.given,
      num_samples=FLAGS.samples,
      seed=FLAGS.seed,
    )
  except (FileExistsError, FileNotFoundError, ValueError) as e:
    logging.error("%s", e)
    sys.exit(2)
  if not summary["studies"]:
    logging.error("No study of %s could be used.", FLAGS.input)
    sys.exit(1)


if __name__ == "__main__":
  from mopoe_jax.evaluation import retired  # pylint: disable=g-import-not-at-top

  try:  # --config.eval.probe_repeats and the like: name the new field (ml_collections cannot)
    retired.check_overrides(sys.argv[1:])
  except ValueError as e:
    sys.exit(f"FATAL Flags parsing error: {e}")
  app.run(main)
