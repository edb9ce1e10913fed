"""A finished run is recognised only for the very config, at the newest checkpoint, after its
evaluation returned (mopoe_jax.evaluation.finished; main.py end to end: test_fresh_install)."""

import os

from configs import tiny
from mopoe_jax.evaluation import finished


def _workdir(tmp_path, *steps):
  for step in steps:
    os.makedirs(tmp_path / "checkpoints" / str(step))
  return str(tmp_path)


def test_finished_only_for_the_same_config_at_the_newest_checkpoint(tmp_path):
  config = tiny.get_config()
  workdir = _workdir(tmp_path, 2, 4)
  assert finished.finished_step(config, workdir) is None  # not evaluated yet
  finished.mark_finished(config, workdir, 4)
  assert finished.finished_step(config, workdir) == 4
  other = tiny.get_config()
  other.eval.seed = 7
  assert finished.finished_step(other, workdir) is None  # another run
  os.makedirs(tmp_path / "checkpoints" / "6")  # trained further since
  assert finished.finished_step(config, workdir) is None


def test_an_older_or_damaged_record_is_not_a_finished_run(tmp_path):
  config = tiny.get_config()
  workdir = _workdir(tmp_path, 4)
  finished.mark_finished(config, workdir, 2)  # an evaluation of an older step
  assert finished.finished_step(config, workdir) is None
  (tmp_path / finished.FINISHED_FILE).write_text('{"step": 4, "conf')  # cut short
  assert finished.finished_step(config, workdir) is None
  assert finished.finished_step(config, str(tmp_path / "absent")) is None
