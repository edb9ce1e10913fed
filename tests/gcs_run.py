"""Train, resume and evaluate with a ``gs://`` workdir, as main.py does (for tests/test_gcs.py).

  python tests/gcs_run.py --workdir=gs://bucket/run --tensorboard=DIR --data_dir=DIR \
      [--mode=train_and_evaluate] --num_steps=4 [--kill_after_checkpoint=2]

Everything under the workdir (checkpoints, model.json, the compilation cache and the traced
step, evaluation outputs) goes to the bucket; the TensorBoard writer and the prepared dataset
are local, because TensorFlow's file system cannot be pointed at a GCS emulator (its endpoint
is compiled in). ``--kill_after_checkpoint=N`` SIGKILLs this process as soon as the checkpoint
of step N is complete in the bucket: a preempted VM, not a clean stop.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv):
  del argv
  from absl import logging  # pylint: disable=g-import-not-at-top
  from conftest import two_device_config  # pylint: disable=g-import-not-at-top

  from input_pipeline import tf_import, tfds_source  # pylint: disable=g-import-not-at-top
  from mopoe_jax.evaluation import evaluate
  from mopoe_jax.platform import paths, runtime

  # pylint: disable-next=g-import-not-at-top
  from mopoe_jax.training import checkpointing
  from mopoe_jax.training import loop as train

  logging.info("XLA_FLAGS=%s", runtime.apply_defaults())
  metric_writers = tf_import.metric_writers()  # as main.py: clu without Keras
  config = two_device_config(FLAGS.data_dir, num_steps=FLAGS.num_steps)
  config.train.compilation_cache_dir = paths.join(FLAGS.workdir, "xla_cache")
  config.eval.evaluators = ("likelihood",)
  config.eval.likelihood.update(examples=8, samples=2, batch_size=8)
  workdir = paths.makedirs(FLAGS.workdir)
  runtime.enable_compilation_cache(config.train.compilation_cache_dir)
  if FLAGS.kill_after_checkpoint is not None:
    real_save = checkpointing.save

    def save_then_die(manager, state, meta, **kwargs):
      real_save(manager, state, meta, **kwargs)
      if int(meta["data_position"]) == FLAGS.kill_after_checkpoint:
        manager.wait_until_finished()
        logging.info("Checkpoint %d is complete; SIGKILL.", FLAGS.kill_after_checkpoint)
        os.kill(os.getpid(), signal.SIGKILL)

    checkpointing.save = save_then_die
  data = tfds_source.load(config.data)
  writer = metric_writers.create_default_writer(FLAGS.tensorboard)
  train.train_and_evaluate(config, workdir, data, writer)
  if FLAGS.mode == "train_and_evaluate":  # as main.py: restores the newest checkpoint
    evaluate.evaluate(config, workdir, data, writer)
  writer.close()


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import

  FLAGS = flags.FLAGS
  flags.DEFINE_string("workdir", None, "gs://bucket/run")
  flags.DEFINE_string("tensorboard", None, "A local folder for the metric writer.")
  flags.DEFINE_string("data_dir", None, "The tfds data dir of synthetic_cxr/tiny.")
  flags.DEFINE_enum("mode", "train", ["train", "train_and_evaluate"], "What to run.")
  flags.DEFINE_integer("num_steps", 4, "Steps to train to.")
  flags.DEFINE_integer("kill_after_checkpoint", None, "SIGKILL after this step's checkpoint.")
  app.run(main)
