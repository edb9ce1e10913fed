"""Orbax checkpoints of a training run.

Each step directory holds three items:
  model  {params, batch_stats}      what evaluation restores (no optimizer state)
  train  {step, opt_state}          the rest of the TrainState
  meta   JSON: plateau tracker, data position, config fingerprint
Orbax writes each checkpoint to a temporary directory and renames it when complete, so a
half-written checkpoint is never listed, never restored. Retention keeps the newest
``keep`` checkpoints plus the best by eval loss.
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp

MODEL, TRAIN, META = "model", "train", "meta"


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def create_manager(workdir: str, keep: int = 3, read_only: bool = False,
                   async_save: bool = True) -> ocp.CheckpointManager:
  """A CheckpointManager keeping the latest ``keep`` steps and the best by ``eval_loss``."""
  policies = [ocp.checkpoint_managers.LatestN(n=keep),
              ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m["eval_loss"], reverse=True,
                                            n=1, keep_checkpoints_without_metrics=False)]
  options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
      create=not read_only, read_only=read_only, enable_async_checkpointing=async_save,
      cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_names=(MODEL, TRAIN, META))


def save(manager: ocp.CheckpointManager, state, meta: dict, metrics: dict | None = None,
         force: bool = False) -> bool:
  """Saves ``state`` (a TrainState with batch_stats) at ``state.step``."""
  step = int(jax.device_get(state.step))
  saved = manager.save(
      step,
      args=ocp.args.Composite(**{
          MODEL: ocp.args.StandardSave({"params": state.params,
                                        "batch_stats": state.batch_stats}),
          TRAIN: ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}),
          META: ocp.args.JsonSave(meta),
      }),
      metrics=metrics, force=force)
  if saved:
    logging.info("Saving checkpoint of step %d to %s", step, manager.directory)
  return saved


def restore_train_state(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Restores the full TrainState (against an abstract target) and the meta dict."""
  step = manager.latest_step() if step is None else step
  restored = manager.restore(step, args=ocp.args.Composite(**{
      MODEL: ocp.args.StandardRestore({"params": abstract_state.params,
                                       "batch_stats": abstract_state.batch_stats}),
      TRAIN: ocp.args.StandardRestore({"step": abstract_state.step,
                                       "opt_state": abstract_state.opt_state}),
      META: ocp.args.JsonRestore(),
  }))
  model, train = restored[MODEL], restored[TRAIN]
  state = abstract_state.replace(params=model["params"], batch_stats=model["batch_stats"],
                                 step=train["step"], opt_state=train["opt_state"])
  return state, restored[META]


def meta_restore_args() -> ocp.args.Composite:
  """Restores only the meta JSON of a checkpoint (cheap: checks before loading arrays)."""
  return ocp.args.Composite(**{META: ocp.args.JsonRestore()})


def restore_model_variables(manager: ocp.CheckpointManager, abstract_variables: Any,
                            step: int | None = None):
  """Restores only {params, batch_stats} (no optimizer state) and the meta dict."""
  step = manager.latest_step() if step is None else step
  restored = manager.restore(step, args=ocp.args.Composite(**{
      MODEL: ocp.args.StandardRestore(abstract_variables),
      META: ocp.args.JsonRestore(),
  }))
  return restored[MODEL], restored[META]
