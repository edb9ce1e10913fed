"""Orbax checkpoints of a training run, and restoring the newest one that is intact.

Each step directory holds three items:
  model  {params, batch_stats}      what evaluation restores (no optimizer state)
  train  {step, opt_state}          the rest of the TrainState
  meta   JSON: the run's fields (`mopoe_jax.training.fingerprint`), plateau tracker, data position,
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
import gc
import logging as logging_std
import sys
from typing import Any, Callable, Sequence

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from mopoe_jax.platform import paths

MODEL, TRAIN, META = "model", "train", "meta"
DAMAGED_DIR = "checkpoints_damaged"
_TMP_MARK = ".orbax-checkpoint-tmp"


class NoRestorableCheckpointError(RuntimeError):
  """No checkpoint of the directory could be restored."""


def checkpoint_dir(workdir: str) -> str:
  return paths.join(paths.resolve(workdir), "checkpoints")


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
  return ocp.options.MultiprocessingOptions(
    primary_host=jax.process_index(), active_processes={jax.process_index()}
  )


def create_manager(
  workdir: str,
  keep: int = 3,
  read_only: bool = False,
  async_save: bool = True,
  keep_step: KeepStep | None = None,
  this_process_only: bool = False,
) -> ocp.CheckpointManager:
  """A CheckpointManager of ``<workdir>/checkpoints`` keeping the latest ``keep`` steps and the
  step of ``keep_step``. ``this_process_only``: the manager is used by this process alone (e.g.
  evaluation on process 0 while the others wait), not by all of them."""
  directory = checkpoint_dir(workdir)
  if not read_only and epath.Path(directory).is_dir():
    leftovers = sorted(p.name for p in epath.Path(directory).iterdir() if _TMP_MARK in p.name)
    if leftovers and jax.process_index() == 0:
      logging.warning(
        "Removing %d incomplete checkpoint write(s) left by an interrupted save "
        "(never a listed checkpoint): %s",
        len(leftovers),
        leftovers,
      )
  policies = [ocp.checkpoint_managers.LatestN(n=keep)]
  if keep_step is not None:
    policies.append(keep_step)
  multiprocessing = (
    this_process_options() if this_process_only else ocp.options.MultiprocessingOptions()
  )
  options = ocp.CheckpointManagerOptions(
    preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
    create=not read_only,
    read_only=read_only,
    enable_async_checkpointing=async_save,
    cleanup_tmp_directories=not read_only,
    multiprocessing_options=multiprocessing,
  )
  return ocp.CheckpointManager(directory, options=options, item_names=(MODEL, TRAIN, META))


def save(manager: ocp.CheckpointManager, state, meta: dict, force: bool = False) -> bool:
  """Saves ``state`` (a TrainState with batch_stats) at ``state.step`` (every process calls
  this; Orbax writes each array once and the metadata from the primary process)."""
  step = int(jax.device_get(state.step))
  saved = manager.save(
    step,
    args=ocp.args.Composite(
      **{
        MODEL: ocp.args.StandardSave({"params": state.params, "batch_stats": state.batch_stats}),
        TRAIN: ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}),
        META: ocp.args.JsonSave(meta),
      }
    ),
    force=force,
  )
  if saved:
    logging.info("Saving checkpoint of step %d to %s", step, manager.directory)
  return saved


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
  """The metadata JSON of a step (cheap: no array is read)."""
  return manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]


def restore_train_state(manager: ocp.CheckpointManager, abstract_state, step: int):
  """Restores the full TrainState of ``step`` against an abstract target.

  The two items are read one after the other: when one fails, no read of the other is still in
  flight (its callbacks would hit Orbax's closed event loop: a storm of RuntimeErrors).
  """
  model = restore_model_variables(
    manager, {"params": abstract_state.params, "batch_stats": abstract_state.batch_stats}, step
  )
  train = manager.restore(
    step,
    args=ocp.args.Composite(
      **{
        TRAIN: ocp.args.StandardRestore(
          {"step": abstract_state.step, "opt_state": abstract_state.opt_state}
        )
      }
    ),
  )[TRAIN]
  return abstract_state.replace(
    params=model["params"],
    batch_stats=model["batch_stats"],
    step=train["step"],
    opt_state=train["opt_state"],
  )


def restore_model_variables(manager: ocp.CheckpointManager, abstract_variables: Any, step: int):
  """Restores only {params, batch_stats} of ``step`` (no optimizer state)."""
  restored = manager.restore(
    step, args=ocp.args.Composite(**{MODEL: ocp.args.StandardRestore(abstract_variables)})
  )
  return restored[MODEL]


def failure_reason(error: BaseException) -> str:
  """One line: the innermost cause of ``error`` (e.g. TensorStore's OUT_OF_RANGE on a file)."""
  root = error
  while True:
    inner = root.__cause__ or (None if root.__suppress_context__ else root.__context__)
    if inner is None:
      break
    root = inner
  lines = str(root).strip().splitlines()
  text = lines[0] if lines else ""
  return f"{type(root).__name__}: {text[:300]}"


class _AbandonedReads:
  """Keeps the reads that Orbax abandons in a failed restore from reporting the failure again.

  When one array of a step cannot be read, Orbax stops waiting for the others and closes its
  event loop; as they end, each reports again: "RuntimeError: Event loop is closed" from its
  callback, "Exception ignored in <coroutine _read_array_index_and_device_put>" when collected,
  asyncio's "Future exception was never retrieved" (a storm of tracebacks around the one line
  `restore_newest` logs). From the first restore that `restore_newest` tries on, this filters
  exactly those reports (sys.unraisablehook and the 'asyncio' logger); everything else passes.
  Installed before the restore, not after its failure: the first echoes can come from Orbax's
  threads before the failed restore has returned (seen as a flaky test failure).
  """

  def __init__(self):
    self._previous_hook = sys.unraisablehook

  def _is_echo(self, unraisable) -> bool:
    name = getattr(unraisable.object, "__name__", "")
    return name == "_read_array_index_and_device_put" or (
      isinstance(unraisable.exc_value, RuntimeError)
      and "Event loop is closed" in str(unraisable.exc_value)
    )

  def _hook(self, unraisable) -> None:
    if not self._is_echo(unraisable):
      self._previous_hook(unraisable)

  @staticmethod
  def _record_passes(record) -> bool:
    text = record.getMessage()
    return not ("Future exception was never retrieved" in text or "Event loop is closed" in text)

  def install(self) -> None:
    """Installs the filters (unless in place)."""
    if sys.unraisablehook != self._hook:  # pylint: disable=comparison-with-callable
      self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._hook
    logging_std.getLogger("asyncio").addFilter(self._record_passes)  # once: a no-op after

  def after_failure(self) -> None:
    """Collects the abandoned reads that have already ended (their echoes are filtered)."""
    self.install()
    gc.collect()


_abandoned_reads = _AbandonedReads()


def _all_agree(ok: bool, collective: bool) -> bool:
  """True when ``ok`` holds on every process (the same answer everywhere)."""
  if not collective or jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


def restore_newest(
  manager: ocp.CheckpointManager,
  restore: Callable[[int], Any],
  check: Callable[[int, dict], None],
  *,
  steps: Sequence[int] | None = None,
  collective: bool = True,
) -> tuple[int, Any, dict, list[tuple[int, str]]]:
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
      _abandoned_reads.install()
      try:
        restored = restore(step)
      except Exception as e:  # pylint: disable=broad-exception-caught
        reason = failure_reason(e)
      if reason is not None:  # the exception and its frames are gone: collect what they held
        _abandoned_reads.after_failure()
      if _all_agree(reason is None, collective):
        return step, restored, meta, failures
    reason = reason or "it failed on another process"
    failures.append((step, reason))
    then = f"trying step {steps[i + 1]}" if i + 1 < len(steps) else "no older step left"
    logging.warning(
      "Cannot restore the checkpoint of step %d in %s (%s); %s.",
      step,
      manager.directory,
      reason,
      then,
    )
  tried = "; ".join(f"step {s}: {r}" for s, r in failures)
  raise NoRestorableCheckpointError(
    f"None of the checkpoints in {manager.directory} can be restored (tried, newest first: "
    f"{tried}). Nothing was deleted. Restore the directory from a copy, or train afresh with "
    "a new --workdir."
  )


def set_aside(manager: ocp.CheckpointManager, steps: Sequence[int], workdir: str) -> None:
  """Moves the step directories of ``steps`` to ``<workdir>/checkpoints_damaged/`` (process 0;
  every process calls this) so that training can save those steps again; nothing is deleted."""
  if not steps:
    return
  if jax.process_index() == 0:
    target_root = paths.makedirs(paths.join(paths.resolve(workdir), DAMAGED_DIR))
    for step in steps:
      source = epath.Path(manager.directory) / str(step)
      target, n = epath.Path(target_root) / str(step), 1
      while target.exists():
        target, n = epath.Path(target_root) / f"{step}.{n}", n + 1
      source.rename(target)  # on an object store: copied, then the source deleted
      logging.warning(
        "Moved the unreadable checkpoint of step %d to %s (kept for inspection; "
        "delete it when done).",
        step,
        target,
      )
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("mopoe_checkpoints_set_aside")
  manager.reload()
