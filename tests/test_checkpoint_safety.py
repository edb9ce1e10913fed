"""Runs that survive: damaged checkpoints, checkpoints of another config, errors inside the loop.

The training runs start from copies of the session's straight run (30 steps, checkpoints 20 and
30) and must end where it ended, bit for bit.
"""

import dataclasses
import logging
import os
import re
import shutil

from conftest import assert_trees_equal, load_data, state_tree, tiny_config, train_run
import pytest

from input_pipeline import tfds_source
from mopoe_jax.data import text as text_lib
from mopoe_jax.evaluation import evaluate
from mopoe_jax.training import checkpointing, fingerprint
from mopoe_jax.training import loop as train

DAMAGES = ("truncated_file", "deleted_file", "stray_tmp_directory")


def _copy_run(workdir: str, tmp_path) -> str:
  target = str(tmp_path / "run")
  shutil.copytree(checkpointing.checkpoint_dir(workdir), checkpointing.checkpoint_dir(target))
  return target


def _largest_array_file(step_dir: str) -> str:
  """The largest data file (TensorStore's chunks live in directories named 'd') of the
  parameters and batch statistics."""
  files = [
    os.path.join(root, f)
    for root, _, names in os.walk(os.path.join(step_dir, "model"))
    for f in names
    if os.path.basename(root) == "d"
  ]
  return max(files, key=os.path.getsize)


def _damage(workdir: str, step: int, how: str) -> None:
  step_dir = os.path.join(checkpointing.checkpoint_dir(workdir), str(step))
  if how == "truncated_file":  # written completely, then cut short (a full disk, a bad copy)
    path = _largest_array_file(step_dir)
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  elif how == "deleted_file":
    os.remove(_largest_array_file(step_dir))
  elif how == "stray_tmp_directory":  # a save that never finished: Orbax never renamed it
    os.rename(step_dir, step_dir + ".orbax-checkpoint-tmp-1764460800")
  else:
    raise ValueError(how)


def _eval_config(config):
  config = tiny_config(config.data.data_dir)
  config.eval.evaluators = ()  # restore and report only: what is tested here
  return config


# ------------------------------------------------------------------------------------------------
# Damaged checkpoints.


# Orbax's abandoned reads of a failed restore must not report it again (a traceback storm).
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", DAMAGES)
def test_training_resumes_from_the_newest_checkpoint_that_restores(
  straight_run, tmp_path, how, caplog, capfd
):
  config, workdir, straight = straight_run
  work = _copy_run(workdir, tmp_path)
  _damage(work, 30, how)
  with caplog.at_level(logging.WARNING):
    resumed = train_run(config, work)
  assert "Event loop is closed" not in capfd.readouterr().err
  # Resumed from step 20 and trained to 30 again: the uninterrupted run's state, bit for bit.
  assert_trees_equal(state_tree(resumed), state_tree(straight))
  if how == "stray_tmp_directory":
    assert "incomplete checkpoint write(s) left by an interrupted save" in caplog.text
    return
  failures = [
    r.getMessage()
    for r in caplog.records
    if r.getMessage().startswith("Cannot restore the checkpoint of step 30")
  ]
  assert len(failures) == 1 and "\n" not in failures[0], failures  # one line, no traceback
  assert "trying step 20" in failures[0]
  # The damaged step was moved aside, not deleted, and step 30 saved afresh.
  damaged = os.path.join(work, checkpointing.DAMAGED_DIR, "30")
  assert os.path.isdir(os.path.join(damaged, "model"))
  assert checkpointing.create_manager(work, read_only=True).latest_step() == 30


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", DAMAGES)
def test_evaluation_uses_the_newest_checkpoint_that_restores(straight_run, tmp_path, how, caplog):
  config, workdir, _ = straight_run
  work = _copy_run(workdir, tmp_path)
  _damage(work, 30, how)
  before = sorted(os.listdir(checkpointing.checkpoint_dir(work)))
  config = _eval_config(config)
  with caplog.at_level(logging.WARNING):
    results = evaluate.evaluate(config, work, load_data(config))
  assert results["settings"]["step"] == 20
  assert sorted(os.listdir(checkpointing.checkpoint_dir(work))) == before  # nothing touched
  if how != "stray_tmp_directory":
    assert re.search(
      r"Cannot restore the checkpoint of step 30 in \S+ \(.+\); trying step 20", caplog.text
    )


def test_no_checkpoint_that_restores_is_one_clear_error(straight_run, tmp_path):
  config, workdir, _ = straight_run
  work = _copy_run(workdir, tmp_path)
  directory = checkpointing.checkpoint_dir(work)
  steps = sorted(checkpointing.create_manager(work, read_only=True).all_steps(), reverse=True)
  for step in steps:
    _damage(work, step, "truncated_file")
  before = sorted(os.listdir(directory))
  tried = ".*".join(f"step {s}: " for s in steps)
  expected = f"None of the checkpoints in {re.escape(directory)} can be restored .*{tried}"
  with pytest.raises(checkpointing.NoRestorableCheckpointError, match=expected):
    train_run(config, work)
  config = _eval_config(config)
  with pytest.raises(checkpointing.NoRestorableCheckpointError, match=expected):
    evaluate.evaluate(config, work, load_data(config))
  assert sorted(os.listdir(directory)) == before  # nothing deleted or moved


# ------------------------------------------------------------------------------------------------
# The recorded fields are checked before any array is read.


@pytest.fixture
def no_array_restore(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("an array was restored before the fields were checked")

  monkeypatch.setattr(checkpointing, "restore_train_state", fail)
  monkeypatch.setattr(checkpointing, "restore_model_variables", fail)


def test_another_vocabulary_is_refused_before_any_array_is_read(
  straight_run, tmp_path, no_array_restore
):
  config, workdir, _ = straight_run
  workdir = _copy_run(workdir, tmp_path)
  data = load_data(config)
  words = list(data.vocab.words) + [f"extra{i}" for i in range(4)]
  other = dataclasses.replace(data, vocab=text_lib.Vocabulary(words))
  message = f"vocab_size: {len(data.vocab)} in the checkpoint, {len(words)} now"
  with pytest.raises(fingerprint.MismatchError, match=message):
    train.train_and_evaluate(config, workdir, other, writer=None)  # fails before writing
  with pytest.raises(fingerprint.MismatchError, match=message):
    evaluate.evaluate(_eval_config(config), workdir, other)


def test_every_differing_shape_field_is_named(straight_run, no_array_restore):
  config, workdir, _ = straight_run
  other = _eval_config(config)
  other.model.latent_dim = 8
  other.model.text_decoder_widths = (16, 16, 16, 16, 8)
  with pytest.raises(fingerprint.MismatchError) as error:
    evaluate.evaluate(other, workdir, load_data(config))
  assert "model.latent_dim: 16 in the checkpoint, 8 now" in str(error.value)
  assert (
    "model.text_decoder_widths: [16, 16, 16, 16, 16] in the checkpoint, [16, 16, 16, 16, 8] now"
  ) in str(error.value)


def test_another_batch_size_cannot_resume_the_data_position_unless_allowed(
  straight_run, tmp_path, no_array_restore
):
  config, workdir, _ = straight_run
  workdir = _copy_run(workdir, tmp_path)
  other = tiny_config(config.data.data_dir, num_steps=30, batch_size=64)
  with pytest.raises(
    fingerprint.MismatchError,
    match=r"(?s)Cannot resume the exact data position of the checkpoint of step "
    r"30 .*train.batch_size: 32 in the checkpoint, 64 now.*"
    r"allow_data_order_change=true",
  ):
    train.train_and_evaluate(other, workdir, load_data(other), writer=None)
  # Allowed: the check passes (and warns); evaluation never minds the data order.
  data = load_data(config)
  now = fingerprint.fields(other, dataset=data.name, vocab_size=len(data.vocab), process_count=1)
  meta = checkpointing.read_meta(checkpointing.create_manager(workdir, read_only=True), 30)
  other.train.allow_data_order_change = True
  fingerprint.check(meta, other, now, step=30, directory=workdir, resuming=True)
  other.train.allow_data_order_change = False
  fingerprint.check(meta, other, now, step=30, directory=workdir, resuming=False)


def test_metadata_without_fields_is_refused():
  config = tiny_config("/nowhere")
  now = fingerprint.fields(
    config, dataset="synthetic_cxr/tiny/1.0.0", vocab_size=166, process_count=1
  )
  with pytest.raises(fingerprint.MismatchError, match=r"records no settings \(keys: \['a'\]\)"):
    fingerprint.check({"a": 1}, config, now, step=20, directory="d", resuming=False)


# ------------------------------------------------------------------------------------------------
# Nothing is lost on an exception inside the loop.


def test_errors_inside_the_loop_lose_nothing(straight_run, tmp_path, monkeypatch, caplog):
  config, _, straight = straight_run
  work = str(tmp_path)
  real_batches, real_eval = tfds_source.TfdsData.train_batches, train.evaluate_loss

  def batches_that_fail_after_7(self, **kwargs):
    for i, batch in enumerate(real_batches(self, **kwargs)):
      if i == 7:
        raise OSError("simulated read error in a shard")
      yield batch

  # 1. A data error at the 8th batch: the state of step 7 is saved before the error propagates.
  monkeypatch.setattr(tfds_source.TfdsData, "train_batches", batches_that_fail_after_7)
  with caplog.at_level(logging.ERROR), pytest.raises(OSError, match="simulated read error"):
    train_run(config, work)
  assert checkpointing.create_manager(work, read_only=True).latest_step() == 7
  assert re.search(
    r"Stopping on OSError: simulated read error in a shard; saved the state of "
    r"step 7 to \S+ first",
    caplog.text,
  )
  monkeypatch.setattr(tfds_source.TfdsData, "train_batches", real_batches)

  # 2. The evaluation at step 10 fails: the checkpoint of step 10 was written before it ran.
  def failing_eval(*args, **kwargs):
    raise RuntimeError("simulated evaluation failure")

  monkeypatch.setattr(train, "evaluate_loss", failing_eval)
  with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="simulated evaluation"):
    train_run(config, work)
  manager = checkpointing.create_manager(work, read_only=True)
  assert manager.latest_step() == 10 and checkpointing.read_meta(manager, 10)["eval_due"]
  assert "the state of step 10 is in its checkpoint" in caplog.text
  monkeypatch.setattr(train, "evaluate_loss", real_eval)

  # 3. All well again: the evaluation still due at step 10 runs first, and the run ends where the
  # uninterrupted one ended.
  resumed = train_run(config, work)
  assert_trees_equal(state_tree(resumed), state_tree(straight))
