"""main.py killed for real (SIGKILL mid-training, SIGKILL during a save, SIGTERM), then rerun.

Each rerun of the same command must end with the parameters, optimizer state and BatchNorm
statistics of an uninterrupted run, bit for bit. The runs share the session's compilation cache
(`subprocess_cache_dir`), so only the first one compiles.
"""

import os
import re
import signal
import subprocess
import time

import pytest

from conftest import (assert_trees_equal, main_command, restored_state_tree, subprocess_env,
                      tiny_config)
from mopoe_jax import checkpointing

NUM_STEPS = 12
OVERRIDES = ("--mode=train", f"--config.train.num_steps={NUM_STEPS}",
             "--config.train.checkpoint_every_steps=4", "--config.train.eval_every_steps=4",
             "--config.train.log_every_steps=4", "--config.train.eval_batches=1")
RUN_TIMEOUT_S = 420


def _command(data_dir, workdir, cache_dir):
  return main_command(data_dir, str(workdir), cache_dir, *OVERRIDES)


def _run(command) -> subprocess.CompletedProcess:
  return subprocess.run(command, env=subprocess_env(), capture_output=True, text=True,
                        timeout=RUN_TIMEOUT_S)


def _tmp_dirs(workdir) -> list[str]:
  directory = checkpointing.checkpoint_dir(str(workdir))
  return [n for n in os.listdir(directory) if ".orbax-checkpoint-tmp" in n] if os.path.isdir(
      directory) else []


def _finished_step(workdir, step: int) -> bool:
  return os.path.isdir(os.path.join(checkpointing.checkpoint_dir(str(workdir)), str(step)))


def _signal_when(command, log_path, condition, sig) -> tuple[subprocess.Popen, bool]:
  """Starts ``command`` and sends ``sig`` as soon as ``condition()`` holds (polled every 5 ms).

  Returns the ended process and whether the signal was sent (False: it ended before).
  """
  with open(log_path, "w") as log:
    proc = subprocess.Popen(command, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + RUN_TIMEOUT_S
  try:
    while proc.poll() is None:
      if condition():
        proc.send_signal(sig)
        proc.wait(timeout=RUN_TIMEOUT_S)
        return proc, True
      if time.monotonic() > deadline:
        raise TimeoutError(f"{command} did not reach the condition in {RUN_TIMEOUT_S} s")
      time.sleep(0.005)
    return proc, False
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def _rerun_and_compare(command, data_dir, workdir, expected) -> str:
  """Reruns ``command`` to the end; its final state must be ``expected``. Returns its log."""
  rerun = _run(command)
  assert rerun.returncode == 0, rerun.stderr[-4000:]
  config = tiny_config(data_dir)
  assert_trees_equal(restored_state_tree(config, str(workdir), NUM_STEPS), expected)
  return rerun.stderr


@pytest.fixture(scope="module")
def uninterrupted(synthetic_tiny_dir, subprocess_cache_dir, tmp_path_factory):
  """The state after NUM_STEPS steps of main.py run in one go."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  proc = _run(_command(synthetic_tiny_dir, workdir, subprocess_cache_dir))
  assert proc.returncode == 0, proc.stderr[-4000:]
  return restored_state_tree(tiny_config(synthetic_tiny_dir), str(workdir), NUM_STEPS)


@pytest.mark.timeout(1500)
def test_sigkill_during_a_save_then_the_same_command_ends_bit_identical(
    uninterrupted, synthetic_tiny_dir, subprocess_cache_dir, tmp_path):
  for attempt in range(3):  # the save window is short: kill as soon as Orbax's tmp dir appears
    workdir = tmp_path / f"attempt{attempt}"
    command = _command(synthetic_tiny_dir, workdir, subprocess_cache_dir)
    proc, sent = _signal_when(command, tmp_path / f"attempt{attempt}.log",
                              lambda w=workdir: bool(_tmp_dirs(w)), signal.SIGKILL)
    if sent and _tmp_dirs(workdir):
      break  # killed with a checkpoint half-written
  else:
    pytest.fail("No attempt caught a save in progress.")
  assert proc.returncode == -signal.SIGKILL
  log = _rerun_and_compare(command, synthetic_tiny_dir, workdir, uninterrupted)
  assert "incomplete checkpoint write(s) left by an interrupted save" in log
  assert not _tmp_dirs(workdir)


@pytest.mark.timeout(1000)
def test_sigkill_mid_training_then_the_same_command_ends_bit_identical(
    uninterrupted, synthetic_tiny_dir, subprocess_cache_dir, tmp_path):
  workdir = tmp_path / "run"
  command = _command(synthetic_tiny_dir, workdir, subprocess_cache_dir)
  proc, sent = _signal_when(command, tmp_path / "killed.log",
                            lambda: _finished_step(workdir, 4), signal.SIGKILL)
  assert sent and proc.returncode == -signal.SIGKILL
  latest = checkpointing.create_manager(str(workdir), read_only=True).latest_step()
  assert latest is not None and 4 <= latest < NUM_STEPS  # interrupted between checkpoints
  log = _rerun_and_compare(command, synthetic_tiny_dir, workdir, uninterrupted)
  assert f"Resumed from step {latest}" in log


@pytest.mark.timeout(600)
def test_sigterm_saves_and_exits_143(synthetic_tiny_dir, subprocess_cache_dir, tmp_path):
  workdir = tmp_path / "run"
  command = _command(synthetic_tiny_dir, workdir, subprocess_cache_dir)
  proc, sent = _signal_when(command, tmp_path / "terminated.log",
                            lambda: _finished_step(workdir, 4), signal.SIGTERM)
  log = (tmp_path / "terminated.log").read_text()
  assert sent and proc.returncode == 143, log[-4000:]
  match = re.search(r"Preempted at step (\d+); the checkpoint of step \1 is in (\S+)\. Rerun "
                    "the same command to resume", log)
  assert match, log[-4000:]
  manager = checkpointing.create_manager(str(workdir), read_only=True)
  assert manager.latest_step() == int(match.group(1)) < NUM_STEPS
