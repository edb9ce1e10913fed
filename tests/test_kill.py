"""main.py killed for real, then rerun: it ends as an uninterrupted run.

One workdir goes through a SIGKILL during a save (a complete checkpoint before it) and a SIGTERM
(exit 143), each followed by the same command; the last one trains to the end. Its parameters,
optimizer state and BatchNorm statistics must equal, bit for bit, those of the session's
uninterrupted run (`straight_run`: the same config, trained in one go in the test process;
main.py and the tests use the same XLA flags and share the compilation cache, so only new
programs compile).
"""

import os
import re
import signal
import subprocess

from conftest import (
  assert_trees_equal,
  main_command,
  restored_state_tree,
  signal_when,
  state_tree,
  subprocess_env,
)
import pytest

from mopoe_jax.training import checkpointing

pytestmark = pytest.mark.slow  # main.py in subprocesses

NUM_STEPS = 30  # straight_run's config, given on the command line
OVERRIDES = (
  "--mode=train",
  f"--config.train.num_steps={NUM_STEPS}",
  "--config.train.checkpoint_every_steps=10",
  "--config.train.eval_every_steps=10",
  "--config.train.log_every_steps=5",
)
RUN_TIMEOUT_S = 420


def _tmp_dirs(workdir) -> list[str]:
  directory = checkpointing.checkpoint_dir(str(workdir))
  return (
    [n for n in os.listdir(directory) if ".orbax-checkpoint-tmp" in n]
    if os.path.isdir(directory)
    else []
  )


def _latest(workdir) -> int | None:
  return checkpointing.create_manager(str(workdir), read_only=True).latest_step()


def _newer_checkpoint(workdir, than: int | None) -> bool:
  directory = checkpointing.checkpoint_dir(str(workdir))
  steps = [int(n) for n in os.listdir(directory) if n.isdigit()] if os.path.isdir(directory) else []
  return any(s > (than if than is not None else -1) for s in steps)


def _signal_when(command, log_path, condition, sig) -> tuple[subprocess.Popen, bool, str]:
  return signal_when(command, log_path, condition, sig, timeout_s=RUN_TIMEOUT_S)


@pytest.mark.timeout(1500)
def test_killed_during_a_save_and_preempted_then_the_same_command_ends_as_an_uninterrupted_run(
  straight_run, subprocess_cache_dir, tmp_path
):
  config, _, straight = straight_run
  expected = state_tree(straight)

  # 1. SIGKILL as soon as Orbax's tmp directory of a save appears while an earlier checkpoint is
  # complete: a checkpoint half-written, training killed between two complete ones. The save
  # window is short: up to 3 attempts, each in a fresh workdir.
  for attempt in range(3):
    workdir = tmp_path / f"attempt{attempt}"
    command = main_command(config.data.data_dir, str(workdir), subprocess_cache_dir, *OVERRIDES)
    proc, sent, log = _signal_when(
      command,
      tmp_path / f"save_kill{attempt}.log",
      lambda w=workdir: bool(_tmp_dirs(w)) and _newer_checkpoint(w, None),
      signal.SIGKILL,
    )
    if sent and _tmp_dirs(workdir):
      break
  else:
    pytest.fail("No attempt caught a save in progress.")
  assert proc.returncode == -signal.SIGKILL, log[-4000:]
  latest = _latest(workdir)
  assert latest is not None and latest < NUM_STEPS

  # 2. The same command removes the half-written save and resumes from the newest complete
  # checkpoint; SIGTERM once its first step is done: it saves that step and exits with 143.
  proc, sent, log = _signal_when(
    command,
    tmp_path / "sigterm.log",
    lambda: "First step done" in (tmp_path / "sigterm.log").read_text(),
    signal.SIGTERM,
  )
  assert sent and proc.returncode == 143, log[-4000:]
  assert "incomplete checkpoint write(s) left by an interrupted save" in log
  assert f"Resumed from step {latest}" in log
  # The restart loads the traced step, eval step and image grids that an earlier start stored
  # (compilation.StoredProgram): the end state below, equal to the straight run's, is computed
  # by that stored step.
  for name in ("train_step", "eval_step", "image_grids"):
    assert f"Loaded the traced {name}" in log, (name, log[-4000:])
  match = re.search(
    r"Preempted at step (\d+); the checkpoint of step \1 is in (\S+)\. Rerun "
    "the same command to resume",
    log,
  )
  assert match, log[-4000:]
  preempted = int(match.group(1))
  assert latest < preempted < NUM_STEPS and _latest(workdir) == preempted

  # 3. The same command trains to the end.
  rerun = subprocess.run(
    command, env=subprocess_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S
  )
  assert rerun.returncode == 0, rerun.stderr[-4000:]
  assert f"Resumed from step {preempted}" in rerun.stderr and not _tmp_dirs(workdir)
  assert_trees_equal(restored_state_tree(config, str(workdir), NUM_STEPS), expected)
