"""A real two-process run: jax.distributed on a localhost coordinator, gloo collectives on CPU.

Two main.py processes (one CPU device each, each reading its own shard of the data) train the
tiny config with one modality (conftest.ONE_MODALITY) for 2 steps, checkpoint and stop; the
same two commands then resume (neither process compiles any of the loop's programs again), train
to step 4 and evaluate (process 0 evaluates, process 1 waits for it). The result must equal, bit for
bit, one process with two devices fed the same global batches (tests/two_shards.py): both run
the same per-device program, and an all-reduce over two devices adds the same two numbers
either way (measured: parameters, BatchNorm statistics and Adam state identical). The two
processes split the train state over their devices (``train.shard_optimizer``) where the
reference keeps it replicated: the split step computes the same numbers, its checkpoints restore
onto one device, and a resume reloads them split.
"""

import json
import os
import re
import socket
import subprocess

from conftest import (
  TWO_DEVICE_OVERRIDES,
  TWO_DEVICE_STEPS,
  assert_trees_equal,
  main_command,
  restored_state_tree,
  subprocess_env,
  two_device_config,
)
import pytest

from mopoe_jax.training import checkpointing

pytestmark = pytest.mark.slow  # main.py in subprocesses

NUM_PROCESSES = 2
PHASE_TIMEOUT_S = 420
# Checkpoints, evaluations and logs every 2 steps; the state split over the two processes'
# devices (the tiny model's arrays are all below the default size that is split).
COMMON = TWO_DEVICE_OVERRIDES + (
  "--config.train.shard_optimizer=true",
  "--config.train.shard_optimizer_min_elements=1024",
)
EVALUATION = (
  '--config.eval.evaluators=("likelihood",)',
  "--config.eval.likelihood.examples=8",
  "--config.eval.likelihood.samples=2",
  "--config.eval.likelihood.batch_size=8",
)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_processes(base_command, log_prefix, started=lambda: None, as_slurm=False) -> list[str]:
  """Runs the command as processes 0 .. NUM_PROCESSES-1 of one job, calls ``started()`` once
  they are started, waits for them; returns their logs.

  Neither way sets ``train.multihost``: ``as_slurm`` gives each process the variables of a
  SLURM step (``srun``) and nothing else, so that the run detects it is one of several and JAX
  finds the coordinator, the count and the id there; otherwise the command line names them.
  """
  port = _free_port()
  procs, logs = [], [f"{log_prefix}.process{i}.log" for i in range(NUM_PROCESSES)]
  for i, log in enumerate(logs):
    env, flags = subprocess_env(), []
    if as_slurm:
      env.update(
        SLURM_JOB_ID="4242",
        SLURM_STEP_NODELIST="127.0.0.1",
        SLURM_NTASKS=str(NUM_PROCESSES),
        SLURM_PROCID=str(i),
        SLURM_LOCALID=str(i),
        JAX_COORDINATOR_PORT=str(port),
      )
    else:
      flags = [
        f"--config.train.coordinator_address=127.0.0.1:{port}",
        f"--config.train.num_processes={NUM_PROCESSES}",
        f"--config.train.process_id={i}",
      ]
    with open(log, "w") as f:
      procs.append(
        subprocess.Popen([*base_command, *flags], env=env, stdout=f, stderr=subprocess.STDOUT)
      )
  try:
    started()
    codes = [p.wait(timeout=PHASE_TIMEOUT_S) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  texts = [open(log).read() for log in logs]
  for i, (code, text) in enumerate(zip(codes, texts)):
    assert code == 0, f"process {i} exited {code}:\n{text[-4000:]}"
  return texts


@pytest.mark.timeout(1500)
def test_two_processes_train_resume_and_evaluate_as_one_process_with_two_devices(
  synthetic_tiny_dir, subprocess_cache_dir, two_device_run, tmp_path
):
  assert TWO_DEVICE_STEPS == 4
  workdir = str(tmp_path / "multihost")
  command = main_command(synthetic_tiny_dir, workdir, subprocess_cache_dir, *COMMON)
  # 1. Train 2 steps on two processes of a SLURM step, checkpoint, stop.
  logs = _run_processes(
    [*command, "--mode=train", "--config.train.num_steps=2"], tmp_path / "train", as_slurm=True
  )
  for i, log in enumerate(logs):
    assert f"Several processes (SLURM job 4242: task {i} of 2 on 127.0.0.1)" in log
    assert f"Process {i} stores the programs it compiles" in log
  manager = checkpointing.create_manager(workdir, read_only=True)
  assert manager.latest_step() == 2
  assert checkpointing.read_meta(manager, 2)["fields"]["process_count"] == NUM_PROCESSES

  # 2. Resume on two processes, train to step 4, evaluate on process 0 while process 1 waits.
  # The reference (two_device_run) runs beside this phase: both processes load their programs
  # from the cache and process 1 then waits for process 0's evaluation (a core is free). In
  # phase 1 both compile everything and a third process would only slow them down.
  logs = _run_processes(
    [*command, "--mode=train_and_evaluate", "--config.train.num_steps=4", *EVALUATION],
    tmp_path / "resume",
    started=two_device_run.start,
  )
  assert all(
    "Several processes (config.train.coordinator_address, config.train.num_processes, "
    "config.train.process_id)" in log
    for log in logs
  )
  assert all("Resumed from step 2" in log for log in logs)
  # Both processes load the steps that phase 1 traced and stored, and still match (below).
  assert all("Loaded the traced train_step" in log for log in logs)
  assert all("Loaded the traced eval_step" in log for log in logs)
  assert "Process 1: process 0 evaluates; waiting for it" in logs[1]
  # Neither process compiles any of the loop's programs: each loads them from the persistent
  # cache, process 1 its own entries (runtime.store_compiles_on_every_process; JAX stores
  # process 0's only, whose keys on CPU name process 0's devices). Logged: every cache hit, and
  # every miss that compiled for at least jax_persistent_cache_min_compile_time_secs (quicker
  # ones are never stored). Process 0's evaluation, new in this phase, compiles after training.
  for i, log in enumerate(logs):
    assert f"Process {i} stores the programs it compiles" in log
    assert "Loaded jit_train_step from the persistent compilation cache." in log
    training = log.split("Checkpoints: ")[0] if i == 0 else log
    assert not re.findall(r"Compiled \S+ in [\d.]+ s \(not in the persistent", training), i
  assert "Process 1: process 0's evaluation finished." in logs[1]
  with open(os.path.join(workdir, "eval", "results.json")) as f:
    results = json.load(f)
  assert results["settings"]["step"] == 4 and results["likelihood"]["subsets"]

  # 3. The reference.
  reference = two_device_run.workdir()

  config = two_device_config(synthetic_tiny_dir)
  two_processes = restored_state_tree(config, workdir, 4)
  one_process = restored_state_tree(config, reference, 4)
  initial = restored_state_tree(config, workdir, 2)
  assert_trees_equal(two_processes, one_process)  # tolerance 0: bit for bit
  # ... and they trained: the parameters moved between steps 2 and 4.
  with pytest.raises(AssertionError):
    assert_trees_equal(two_processes["params"], initial["params"])
