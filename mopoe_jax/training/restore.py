"""A trained model restored from its workdir: the newest checkpoint that restores, checked.

What evaluation and the trained-model API (`mopoe_jax.inference`) both start from; it needs the
model and the checkpoints only.
"""

from __future__ import annotations

from absl import logging
import jax
import ml_collections

from mopoe_jax.platform import sharding
from mopoe_jax.training import checkpointing, fingerprint
from mopoe_jax.vae import model as model_lib


def restore_model(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  dataset: str,
  vocab_size: int,
  step: int | None = None,
):
  """(step, model, variables) of the newest checkpoint of ``workdir`` that restores (or of
  ``step``, else ``eval.checkpoint_step`` when set), on this process's first device.

  The checkpoint's recorded shape fields are checked against ``config`` first; damaged newer
  steps are logged and skipped.
  """
  manager = checkpointing.create_manager(workdir, read_only=True, this_process_only=True)
  steps = sorted(manager.all_steps())
  if not steps:
    raise FileNotFoundError(
      f"No checkpoint in {checkpointing.checkpoint_dir(workdir)}. Train first "
      f"(python main.py --config=... --workdir={workdir} --mode=train) or point --workdir at "
      "a run directory that has checkpoints/."
    )
  step = config.eval.checkpoint_step if step is None else step
  if step is not None and int(step) not in steps:
    raise ValueError(
      f"No checkpoint of step {step} in {manager.directory}; available steps: {steps}."
    )
  model = model_lib.create_model(config, vocab_size)
  fields = fingerprint.fields(
    config, dataset=dataset, vocab_size=vocab_size, process_count=jax.process_count()
  )

  def check(s, meta):
    fingerprint.check(
      meta, config, fields, step=s, directory=str(manager.directory), resuming=False
    )

  device = jax.local_devices()[0]
  shapes = jax.eval_shape(lambda: model_lib.init_variables(model, config, jax.random.PRNGKey(0)))
  abstract = sharding.abstract(shapes, jax.sharding.SingleDeviceSharding(device))
  step, variables, _, failures = checkpointing.restore_newest(
    manager,
    lambda s: checkpointing.restore_model_variables(manager, abstract, s),
    check,
    steps=None if step is None else [int(step)],
    collective=False,
  )
  if failures:
    logging.warning(
      "Using step %d, the newest checkpoint of %s that restores (steps %s cannot be read).",
      step,
      manager.directory,
      [s for s, _ in failures],
    )
  logging.info("Restored step %d of %s on %s.", step, manager.directory, device)
  return step, model, variables
