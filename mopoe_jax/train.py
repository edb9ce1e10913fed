"""The training loop around the jitted step of `mopoe_jax.step`.

`train_and_evaluate` compiles the step once with ``jax.jit`` over a ``('data',)`` mesh (batch
sharded, state replicated; traced once and kept beside the compilation cache, so that a restart
neither traces nor lowers it: `train_program`), feeds it global batches of the data source,
logs to the metric writer it is given, evaluates the loss on the eval split, lowers the learning
rate on a plateau (when ``train.plateau_factor`` < 1) and checkpoints with Orbax. It resumes
from the newest checkpoint of the workdir that restores (data position included; a damaged
newer one is logged and set aside), after checking the checkpoint's recorded fields against the
config (`mopoe_jax.fingerprint`). A step's checkpoint is written before that step's evaluation
runs (the evaluation still due is recorded and runs on resume); any exception inside the loop
saves the current state first (one process); SIGTERM saves and raises `Preempted`; a
non-finite loss or gradient stops with an error naming the step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import signal
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mopoe_jax import checkpointing, fingerprint, model as model_lib, model_file, objective
from mopoe_jax import runtime, sharding
from mopoe_jax.datasource import DataSource
from mopoe_jax.training_grids import TrainingGrids
from mopoe_jax.step import (StepConfig, TrainState, eval_step, init_state, set_plateau_scale,
                            train_step, validate_config)


class NonFiniteError(RuntimeError):
  """Raised when training produced a non-finite loss or gradient."""


class Preempted(RuntimeError):
  """Raised after SIGTERM (or an Orbax preemption notice) once the checkpoint is saved."""

  def __init__(self, step: int, checkpoint_dir: str):
    super().__init__(f"Preempted at step {step}; the checkpoint of step {step} is in "
                     f"{checkpoint_dir}. Rerun the same command to resume.")
    self.step = step


# ---------------------------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class Plateau:
  """Reduce-on-plateau of the eval loss; its state travels in the checkpoint.

  The schedule: docs/model.md#training.
  """
  best: float = math.inf
  bad_evals: int = 0
  scale: float = 1.0
  best_step: int | None = None  # the step whose evaluation gave ``best``

  def update(self, eval_loss: float, patience: int, factor: float, min_scale: float,
             step: int | None = None) -> bool:
    """Records the evaluation of ``step``; True when the learning rate should drop now.

    ``factor`` 1.0 is no schedule (the reference's VAE: a constant learning rate): the best
    loss is still tracked, the rate never drops.
    """
    if eval_loss < self.best:
      self.best, self.bad_evals, self.best_step = eval_loss, 0, step
      return False
    self.bad_evals += 1
    if factor >= 1.0 or self.bad_evals < patience or self.scale <= min_scale:
      return False
    self.scale, self.bad_evals = max(self.scale * factor, min_scale), 0
    return True


class _Preemption:
  """Turns SIGTERM into a flag that the loop checks after each step (one process; with several,
  JAX's preemption service catches SIGTERM and `manager.reached_preemption` agrees on a step)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() > 1:
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: rely on Orbax's preemption check alone
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and stopping after this step.")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _check_finite(state: TrainState, manager) -> None:
  bad = int(jax.device_get(state.bad_step))
  if bad >= 0:
    manager.wait_until_finished()
    last = manager.latest_step()
    where = (f"the last good checkpoint is step {last} in {manager.directory}"
             if last is not None else "no checkpoint was saved before it")
    raise NonFiniteError(
        f"Training diverged: the loss or a gradient was not finite at step {bad}; {where}. "
        "Nothing after that step was applied. Lower --config.train.learning_rate, lengthen "
        "--config.train.warmup_steps, or bound the log-variances with "
        "--config.model.logvar_bound=10.")


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _mean_metrics(history: list) -> dict:
  host = jax.device_get(history)
  return {k: float(np.mean([h[k] for h in host])) for k in host[0]}


TRAIN_KEYS = ("frontal", "lateral", "text", "available")  # what the step reads of a batch
EVAL_KEYS = TRAIN_KEYS + ("valid",)


def evaluate_loss(p_eval, state, data: DataSource, config, mesh,
                  num_batches: int | None) -> dict:
  """Mean eval terms over (the first ``num_batches`` batches of) the eval split."""
  it = data.eval_batches(config.data.eval_split, batch_size=config.train.batch_size)
  totals = None
  for i, batch in enumerate(it):
    if num_batches is not None and i >= num_batches:
      break
    batch = {k: batch[k] for k in EVAL_KEYS}
    sums = jax.device_get(p_eval(state, sharding.to_global_batch(batch, mesh)))
    totals = sums if totals is None else {k: totals[k] + sums[k] for k in sums}
  if totals is None:
    raise ValueError(f"The eval split {config.data.eval_split!r} of {config.data.name} is empty.")
  return {k: float(v) for k, v in objective.means(totals).items()}


def num_train_steps(config, data: DataSource) -> tuple[int, int]:
  """(total steps, steps per epoch) from num_steps or num_epochs and the train split size."""
  n = data.num_examples(config.data.train_split)
  steps_per_epoch = n // config.train.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"The train split has {n} usable studies, fewer than one batch of "
                     f"{config.train.batch_size}; lower --config.train.batch_size.")
  if config.train.num_steps is not None:
    return int(config.train.num_steps), steps_per_epoch
  return max(1, int(config.train.num_epochs * steps_per_epoch)), steps_per_epoch


def _flat_hparams(config) -> dict:
  flat = {}

  def visit(prefix, node):
    for k, v in node.items():
      key = f"{prefix}{k}"
      if isinstance(v, ml_collections.ConfigDict):
        visit(key + ".", v)
      else:
        flat[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
  visit("", config)
  return flat


def _state_fields(config: ml_collections.ConfigDict) -> tuple:
  """The config fields that `init_state` reads besides the model: input shapes, optimizer (the
  optimizer's functions then live in the state's tree, and the train step runs them)."""
  d, t = config.data, config.train
  return (d.image_size, d.text_length, tuple(d.modalities), t.learning_rate, t.warmup_steps,
          t.b1, t.b2)


def init_program(config: ml_collections.ConfigDict, model, mesh):
  """The jitted `init_state` of ``model`` and ``config``, its output replicated over ``mesh``:
  one object per program in this process (`runtime.jitted_once`)."""
  fields = _state_fields(config)
  return runtime.jitted_once(
      (init_state, model, fields, mesh),
      lambda: jax.jit(functools.partial(init_state, model, config),
                      out_shardings=sharding.replicated(mesh)))


def _flat_train_step(state_leaves, batch, rng, *, treedef, model, step_config):
  """`train_step` on the state's leaves (what `runtime.StoredProgram` can keep on disk)."""
  state, metrics = train_step(jax.tree.unflatten(treedef, state_leaves), batch, rng,
                              model=model, step_config=step_config)
  return jax.tree.leaves(state), metrics


def train_program(config: ml_collections.ConfigDict, model, step_config: StepConfig, mesh,
                  abstract, batch_shape) -> runtime.StoredProgram:
  """The train step over ``mesh`` (batch sharded, state replicated and donated) as a
  `runtime.StoredProgram` of the state's leaves: traced once, kept beside the compilation cache
  (unless ``train.compilation_cache`` is off), loaded untraced by a restart; one object per
  program in this process. Call it through `_tree_step`."""
  replicated, sharded = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  treedef = jax.tree.structure(abstract)
  key = runtime.program_key(
      "train_step", model, step_config, _state_fields(config), str(treedef),
      [(x.shape, str(x.dtype), str(x.sharding)) for x in jax.tree.leaves(abstract)],
      sorted((k, v.shape, str(v.dtype), str(v.sharding)) for k, v in batch_shape.items()),
      [d.id for d in mesh.devices.flat])
  return runtime.jitted_once(
      ("stored train step", key),
      lambda: runtime.StoredProgram(
          functools.partial(_flat_train_step, treedef=treedef, model=model,
                            step_config=step_config),
          name="train_step", key=key,
          directory=runtime.stored_programs_dir(config.train.compilation_cache),
          in_shardings=(replicated, sharded, replicated), out_shardings=(replicated, replicated),
          donate_argnums=(0,)))


def _tree_step(flat_step, treedef):
  """``(state, batch, rng) -> (state, metrics)`` from the compiled `_flat_train_step`."""

  def step(state, batch, rng):
    leaves, metrics = flat_step(jax.tree.leaves(state), batch, rng)
    return jax.tree.unflatten(treedef, leaves), metrics

  return step


def _resume(manager, abstract, config, fields: dict, workdir: str, on_checked=None):
  """(state, meta) of the newest checkpoint that restores; (None, None) without checkpoints.

  ``abstract``: the train state's shapes and shardings. The recorded fields are checked before
  any array is read (then ``on_checked(step)`` is called); newer steps that cannot be read are
  set aside (moved to ``<workdir>/checkpoints_damaged``) so that they can be saved again.
  """
  if not manager.all_steps():
    return None, None

  def check(step, meta):
    fingerprint.check(meta, config, fields, step=step, directory=str(manager.directory),
                      resuming=True)
    if on_checked is not None:
      on_checked(step)

  _, state, meta, failures = checkpointing.restore_newest(
      manager, lambda step: checkpointing.restore_train_state(manager, abstract, step), check)
  checkpointing.set_aside(manager, [step for step, _ in failures], workdir)
  bad_step = jax.device_put(jnp.asarray(-1, jnp.int32), abstract.bad_step.sharding)
  return state.replace(bad_step=bad_step), meta


def _save_after_error(manager, state, meta: dict, step: int, saved_step: int,
                      error: BaseException) -> None:
  """Saves the state of ``step`` (when finite and not saved yet) before ``error`` propagates."""
  reason = checkpointing.failure_reason(error)
  try:
    manager.wait_until_finished()
    if step == saved_step:
      logging.error("Stopping on %s; the state of step %d is in its checkpoint in %s.", reason,
                    step, manager.directory)
    elif jax.process_count() > 1:
      logging.error("Stopping on %s; the state of step %d is not saved (with several processes "
                    "a save needs all of them); the last checkpoint is step %s in %s.", reason,
                    step, manager.latest_step(), manager.directory)
    elif int(jax.device_get(state.bad_step)) >= 0:
      logging.error("Stopping on %s; the state of step %d is not finite, not saved; the last "
                    "checkpoint is step %s in %s.", reason, step, manager.latest_step(),
                    manager.directory)
    else:
      checkpointing.save(manager, state, meta, force=True)
      manager.wait_until_finished()
      logging.error("Stopping on %s; saved the state of step %d to %s first (rerun the same "
                    "command to resume from it).", reason, step, manager.directory)
    manager.close()
  except Exception as e:  # pylint: disable=broad-exception-caught
    logging.error("Stopping on %s; could not save the state of step %d (%s); the last "
                  "checkpoint is step %s in %s.", reason, step, checkpointing.failure_reason(e),
                  manager.latest_step(), manager.directory)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, data: DataSource,
                       writer) -> TrainState:
  """Trains (resuming from the newest checkpoint in ``workdir``) and returns the final state.

  Args:
    config: the run's config.
    workdir: checkpoints go to ``<workdir>/checkpoints``.
    data: the prepared dataset (`input_pipeline.data.load`); on several hosts,
      ``jax.distributed`` must be initialised before it is built.
    writer: a clu ``MetricWriter`` (write_scalars, write_images, write_hparams), e.g.
      ``metric_writers.create_default_writer(workdir)``; flushed, not closed, at the end.

  Raises:
    Preempted: after SIGTERM, once the checkpoint of the current step is saved.
    NonFiniteError: when a loss or gradient was not finite (names the step).
    fingerprint.MismatchError: when the checkpoint was written with other shapes or (unless
      allowed) another data order.
    checkpointing.NoRestorableCheckpointError: when checkpoints exist but none restores.
  """
  started = time.perf_counter()
  validate_config(config, jax.device_count())
  vocab = data.vocab
  model = model_lib.create_model(config, len(vocab))
  step_config = StepConfig.from_config(config, model, pad_id=vocab.pad_id)
  mesh = sharding.make_data_mesh()
  replicated, sharded = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  total_steps, steps_per_epoch = num_train_steps(config, data)
  fields = fingerprint.fields(config, dataset=data.name, vocab_size=len(vocab),
                              process_count=jax.process_count())

  rng = jax.random.PRNGKey(config.train.seed)
  init_rng, step_rng = jax.random.split(rng)
  # One jitted object per program in this process: a second run here compiles nothing.
  p_init = init_program(config, model, mesh)
  # The state's shapes from the same trace as the state itself: its tree carries the optimizer's
  # functions, which must be the very ones the compiled programs were given.
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated,
                                                         weak_type=x.weak_type),
                          jax.eval_shape(p_init, init_rng))
  batch_shape = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharded) for k, v in
                 model_lib.dummy_batch(config, config.train.batch_size).items()}
  p_train = train_program(config, model, step_config, mesh, abstract, batch_shape)
  compiles = []

  def start_step_compile(*_):
    """The step compiles from the abstract state while the state is initialised or restored;
    after the checkpoint's fields passed their check, so a refused run compiles nothing."""
    if not compiles:
      compiles.append(runtime.BackgroundCompile(p_train, jax.tree.leaves(abstract), batch_shape,
                                                step_rng, name="train step"))

  keep_best = checkpointing.KeepStep()
  manager = checkpointing.create_manager(workdir, keep=config.train.keep_checkpoints,
                                         keep_step=keep_best)
  state, meta = _resume(manager, abstract, config, fields, workdir,
                        on_checked=start_step_compile)
  start_step_compile()
  plateau = Plateau()
  if meta is None:
    tic = time.perf_counter()
    state = runtime.compile_fast(p_init, init_rng)(init_rng)
    jax.block_until_ready(state)
    logging.info("Initialised the train state in %.1f s.", time.perf_counter() - tic)
  else:
    plateau = Plateau(best=meta["plateau_best"], bad_evals=meta["plateau_bad_evals"],
                      scale=meta["plateau_scale"], best_step=meta.get("plateau_best_step"))
    keep_best.step = plateau.best_step
    logging.info("Resumed from step %d of %s.", int(state.step), manager.directory)
  start_step = int(state.step)

  if start_step == 0:
    writer.write_hparams(_flat_hparams(config))
  model_file.write(workdir, config, vocab.words, data.name)  # the model without the dataset
  logging.info("Training %s on %s: %d steps (%d per epoch), global batch %d over %d "
               "device(s) of %d process(es), %s parameters.", config.model.variant, data.name,
               total_steps, steps_per_epoch, config.train.batch_size, jax.device_count(),
               jax.process_count(), f"{sum(x.size for x in jax.tree.leaves(state.params)):,}")

  eval_batch_shape = dict(batch_shape, valid=jax.ShapeDtypeStruct(
      (config.train.batch_size,), np.bool_, sharding=sharded))
  p_eval = runtime.compile_fast(runtime.jitted_once(
      (eval_step, model, step_config, mesh),
      lambda: jax.jit(functools.partial(eval_step, model=model, step_config=step_config),
                      in_shardings=(replicated, sharded), out_shardings=replicated)),
      state, eval_batch_shape)
  grids = (TrainingGrids(model, config, data, state, mesh) if config.train.image_grid_studies
           else None)  # 0: no image grids

  train_iter = data.train_batches(global_batch_size=config.train.batch_size,
                                  seed=config.train.seed, start_step=start_step)
  p_train = _tree_step(compiles[0].result(), jax.tree.structure(abstract))
  # XLA:CPU collectives have dead-locked when tiny sharded steps run back to back: on CPU, wait
  # for each step's result (the CPU is busy computing it anyway).
  sync_each_step = jax.default_backend() == "cpu"
  t = config.train
  history, last_eval, tic = [], None, time.time()

  def meta_of(step: int, eval_due: bool) -> dict:
    return {"fields": fields, "plateau_best": plateau.best,
            "plateau_bad_evals": plateau.bad_evals, "plateau_scale": plateau.scale,
            "plateau_best_step": plateau.best_step, "data_position": step,
            "eval_due": eval_due}

  def run_eval(state, step: int):
    """Eval loss, grids and the plateau tracker at ``step``; returns the (re-scaled) state."""
    eval_tic = time.time()
    eval_metrics = evaluate_loss(p_eval, state, data, config, mesh, t.eval_batches)
    writer.write_scalars(step, {f"eval_{k}": v for k, v in eval_metrics.items()})
    if grids is not None:
      writer.write_images(step, grids(state))
    logging.info("eval at step %d: loss %.2f (%.1f s)", step, eval_metrics["loss"],
                 time.time() - eval_tic)
    if plateau.update(eval_metrics["loss"], t.plateau_patience, t.plateau_factor,
                      t.plateau_min_scale, step=step):
      state = set_plateau_scale(state, plateau.scale)
      logging.info("Eval loss has not improved for %d evaluations: learning-rate factor "
                   "now %.3g.", t.plateau_patience, plateau.scale)
    keep_best.step = plateau.best_step
    return state, eval_metrics, time.time() - eval_tic

  step, saved_step = start_step, (start_step if meta is not None else -1)
  # A checkpoint is written before its step's evaluation: that evaluation may still be due.
  eval_pending, stop = bool(meta is not None and meta.get("eval_due")), False
  with _Preemption() as preemption:
    try:
      if eval_pending:
        logging.info("Running the evaluation of step %d, which had not finished.", step)
        state, last_eval, seconds = run_eval(state, step)
        eval_pending = False
        tic += seconds  # steps/s counts training time only
      while step < total_steps and not stop:
        batch = next(train_iter)
        batch = sharding.to_global_batch({k: batch[k] for k in TRAIN_KEYS}, mesh)
        state, metrics = p_train(state, batch, step_rng)
        if sync_each_step:
          jax.block_until_ready(metrics["loss"])
        history.append(metrics)
        step += 1
        if step == start_step + 1:
          jax.block_until_ready(metrics["loss"])
          logging.info("First step done %.1f s after training started (state, compiles, data).",
                       time.perf_counter() - started)
        stop = preemption.requested or manager.reached_preemption(step)
        if step % t.log_every_steps == 0 or step == total_steps or stop:
          _check_finite(state, manager)
          summary = _mean_metrics(history)
          summary["steps_per_second"] = len(history) / max(time.time() - tic, 1e-9)
          history, tic = [], time.time()
          writer.write_scalars(step, {f"train_{k}": v for k, v in summary.items()})
          logging.info("step %d/%d: loss %.2f (rec %.2f, kl %.2f), %.2f steps/s, lr %.2e, "
                       "ETA %s", step, total_steps, summary["loss"], summary["rec"],
                       summary["kl"], summary["steps_per_second"], summary["learning_rate"],
                       _duration((total_steps - step) / summary["steps_per_second"]))
        eval_pending = step % t.eval_every_steps == 0 or step == total_steps
        if step % t.checkpoint_every_steps == 0 or step == total_steps or stop:
          _check_finite(state, manager)
          checkpointing.save(manager, state, meta_of(step, eval_pending), force=stop)
          saved_step = step
        if eval_pending and not stop:
          state, last_eval, seconds = run_eval(state, step)
          eval_pending = False
          tic += seconds  # steps/s counts training time only
    except (Exception, KeyboardInterrupt) as error:
      _save_after_error(manager, state, meta_of(step, eval_pending), step, saved_step, error)
      raise
  manager.wait_until_finished()
  manager.close()
  writer.flush()
  del train_iter
  if step < total_steps:
    raise Preempted(step, str(manager.directory))
  if last_eval is not None:
    logging.info("Final eval loss %.3f at step %d.", last_eval["loss"], step)
  return state
