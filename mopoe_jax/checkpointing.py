"""Orbax checkpoints of a training run, and restoring the newest one that is intact.

Each step directory holds three items:
  model  {params, batch_stats}      what evaluation restores (no optimizer state)
  train  {step, opt_state}          the rest of the TrainState
  meta   JSON: the run's fields (`mopoe_jax.fingerprint`), plateau tracker, data position,
         whether the step's evaluation is still due
Orbax writes each checkpoint to a temporary directory (``<step>.orbax-checkpoint-tmp-*``) and
renames it when complete, so a save interrupted by a kill is never listed; a writable manager
removes such leftovers (and logs them). Retention keeps the newest ``keep`` checkpoints plus the
step that `KeepStep` names (the training loop's best by eval loss).

`restore_newest` reads a step's metadata, checks it, then restores its arrays; a step that
cannot be read (a truncated or missing file) is logged in one line and the next older step is
tried. Training sets such steps aside (`set_aside`: moved, never deleted) so that it can write
those steps again. With several processes every process calls `save` and the restores of
training; evaluation restores on process 0 alone (``this_process_only``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

MODEL, TRAIN, META = "model", "train", "meta"
DAMAGED_DIR = "checkpoints_damaged"
_TMP_MARK = ".orbax-checkpoint-tmp"


class NoRestorableCheckpointError(RuntimeError):
  """No checkpoint of the directory could be restored."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


@dataclasses.dataclass
class KeepStep(ocp.checkpoint_managers.PreservationPolicy):
  """Preserves the checkpoint of ``step`` (None: none); the caller moves it as it learns more,
  e.g. to the step with the best eval loss once that evaluation has run."""
  step: int | None = None

  def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> Sequence[bool]:
    del context
    return [info.step == self.step for info in checkpoints]


def this_process_options() -> ocp.options.MultiprocessingOptions:
  """Orbax options for a manager that this process uses alone (the others do not call it)."""
  if jax.process_count() == 1:
    return ocp.options.MultiprocessingOptions()
  return ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                            active_processes={jax.process_index()})


def create_manager(workdir: str, keep: int = 3, read_only: bool = False,
                   async_save: bool = True, keep_step: KeepStep | None = None,
                   this_process_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager of ``<workdir>/checkpoints`` keeping the latest ``keep`` steps and the
  step of ``keep_step``. ``this_process_only``: the manager is used by this process alone (e.g.
  evaluation on process 0 while the others wait), not by all of them."""
  directory = checkpoint_dir(workdir)
  if not read_only and os.path.isdir(directory):
    leftovers = sorted(n for n in os.listdir(directory) if _TMP_MARK in n)
    if leftovers and jax.process_index() == 0:
      logging.warning("Removing %d incomplete checkpoint write(s) left by an interrupted save "
                      "(never a listed checkpoint): %s", len(leftovers), leftovers)
  policies = [ocp.checkpoint_managers.LatestN(n=keep)]
  if keep_step is not None:
    policies.append(keep_step)
  multiprocessing = (this_process_options() if this_process_only
                     else ocp.options.MultiprocessingOptions())
  options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
      create=not read_only, read_only=read_only, enable_async_checkpointing=async_save,
      cleanup_tmp_directories=not read_only, multiprocessing_options=multiprocessing)
  return ocp.CheckpointManager(directory, options=options, item_names=(MODEL, TRAIN, META))


def save(manager: ocp.CheckpointManager, state, meta: dict, force: bool = False) -> bool:
  """Saves ``state`` (a TrainState with batch_stats) at ``state.step`` (every process calls
  this; Orbax writes each array once and the metadata from the primary process)."""
  step = int(jax.device_get(state.step))
  saved = manager.save(
      step,
      args=ocp.args.Composite(**{
          MODEL: ocp.args.StandardSave({"params": state.params,
                                        "batch_stats": state.batch_stats}),
          TRAIN: ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}),
          META: ocp.args.JsonSave(meta),
      }),
      force=force)
  if saved:
    logging.info("Saving checkpoint of step %d to %s", step, manager.directory)
  return saved


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
  """The metadata JSON of a step (cheap: no array is read)."""
  return manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]


def restore_train_state(manager: ocp.CheckpointManager, abstract_state, step: int):
  """Restores the full TrainState of ``step`` against an abstract target."""
  restored = manager.restore(step, args=ocp.args.Composite(**{
      MODEL: ocp.args.StandardRestore({"params": abstract_state.params,
                                       "batch_stats": abstract_state.batch_stats}),
      TRAIN: ocp.args.StandardRestore({"step": abstract_state.step,
                                       "opt_state": abstract_state.opt_state}),
  }))
  model, train = restored[MODEL], restored[TRAIN]
  return abstract_state.replace(params=model["params"], batch_stats=model["batch_stats"],
                                step=train["step"], opt_state=train["opt_state"])


def restore_model_variables(manager: ocp.CheckpointManager, abstract_variables: Any, step: int):
  """Restores only {params, batch_stats} of ``step`` (no optimizer state)."""
  restored = manager.restore(step, args=ocp.args.Composite(**{
      MODEL: ocp.args.StandardRestore(abstract_variables)}))
  return restored[MODEL]


def failure_reason(error: BaseException) -> str:
  """One line: the innermost cause of ``error`` (e.g. TensorStore's OUT_OF_RANGE on a file)."""
  root = error
  while (root.__cause__ or root.__context__) is not None:
    root = root.__cause__ or root.__context__
  lines = str(root).strip().splitlines()
  text = lines[0] if lines else ""
  return f"{type(root).__name__}: {text[:300]}"


def _all_agree(ok: bool, collective: bool) -> bool:
  """True when ``ok`` holds on every process (the same answer everywhere)."""
  if not collective or jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


def restore_newest(manager: ocp.CheckpointManager, restore: Callable[[int], Any],
                   check: Callable[[int, dict], None], *, steps: Sequence[int] | None = None,
                   collective: bool = True) -> tuple[int, Any, dict, list[tuple[int, str]]]:
  """Restores the newest of ``steps`` (default: all) whose metadata and arrays can be read.

  For each step, newest first: reads the metadata, calls ``check(step, meta)`` (which raises
  when the checkpoint belongs to another config: that is not a damaged checkpoint, so it
  propagates), then ``restore(step)``. A step that cannot be read is logged in one line and the
  next older one is tried. ``collective``: all processes call this and agree on each step.

  Returns:
    (step, what ``restore`` returned, the metadata, [(step, reason)] of the steps that failed).

  Raises:
    NoRestorableCheckpointError: naming the directory and every step tried, when none restores.
  """
  steps = sorted(manager.all_steps() if steps is None else steps, reverse=True)
  failures = []
  for i, step in enumerate(steps):
    meta, reason = None, None
    try:
      meta = read_meta(manager, step)
    except Exception as e:  # pylint: disable=broad-exception-caught
      reason = f"metadata unreadable: {failure_reason(e)}"
    if _all_agree(reason is None, collective):
      check(step, meta)
      try:
        restored = restore(step)
      except Exception as e:  # pylint: disable=broad-exception-caught
        reason = failure_reason(e)
      if _all_agree(reason is None, collective):
        return step, restored, meta, failures
    reason = reason or "it failed on another process"
    failures.append((step, reason))
    then = f"trying step {steps[i + 1]}" if i + 1 < len(steps) else "no older step left"
    logging.warning("Cannot restore the checkpoint of step %d in %s (%s); %s.", step,
                    manager.directory, reason, then)
  tried = "; ".join(f"step {s}: {r}" for s, r in failures)
  raise NoRestorableCheckpointError(
      f"None of the checkpoints in {manager.directory} can be restored (tried, newest first: "
      f"{tried}). Nothing was deleted. Restore the directory from a copy, or train afresh with "
      "a new --workdir.")


def set_aside(manager: ocp.CheckpointManager, steps: Sequence[int], workdir: str) -> None:
  """Moves the step directories of ``steps`` to ``<workdir>/checkpoints_damaged/`` (process 0;
  every process calls this) so that training can save those steps again; nothing is deleted."""
  if not steps:
    return
  target_root = os.path.join(os.path.abspath(workdir), DAMAGED_DIR)
  if jax.process_index() == 0:
    os.makedirs(target_root, exist_ok=True)
    for step in steps:
      source = os.path.join(str(manager.directory), str(step))
      target, n = os.path.join(target_root, str(step)), 1
      while os.path.exists(target):
        target, n = os.path.join(target_root, f"{step}.{n}"), n + 1
      os.rename(source, target)
      logging.warning("Moved the unreadable checkpoint of step %d to %s (kept for inspection; "
                      "delete it when done).", step, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("mopoe_checkpoints_set_aside")
  manager.reload()
