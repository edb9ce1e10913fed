"""The training loop around the jitted step of `mopoe_jax.training.step`.

`train_and_evaluate` reads top to bottom: the run's settings; a check of the newest
checkpoint's recorded fields against the config (`mopoe_jax.training.fingerprint`: a refused run
compiles nothing); the programs (`mopoe_jax.training.programs.Programs.build`: traced once and
kept beside the compilation cache, the train step compiling in the background unless the
newest checkpoint is of the last step; the eval step and the image grids compiling meanwhile,
or at the first evaluation of a run with nothing left to train); the state, restored from the
newest checkpoint that restores (data position included; a damaged newer one is logged and set
aside) or new; then `_Loop.train`, which feeds the step global batches, logs to the metric
writer it is given, checkpoints with Orbax, evaluates the loss on the eval split and lowers the
learning rate on a plateau (when ``train.plateau_factor`` < 1).

A step's checkpoint is written before that step's evaluation runs; the evaluation is recorded
as due in it, and as finished in ``<workdir>/loop_evaluated.json`` once it has run, so that a
resumed run evaluates only what had not finished (and applies a finished one's recorded loss to
the plateau tracker). Any exception inside the loop saves the current state first (one
process); SIGTERM saves and raises `Preempted`; a non-finite loss or gradient stops with an
error naming the step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import signal
import time
from typing import Any, Callable

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from mopoe_jax.data.datasource import MODEL_KEYS, DataSource
from mopoe_jax.platform import paths, sharding, speed
from mopoe_jax.training import checkpointing, fingerprint, model_file
from mopoe_jax.training import programs as programs_lib
from mopoe_jax.training.grids import TrainingGrids
from mopoe_jax.training.step import (
  StepConfig,
  TrainState,
  for_devices,
  set_plateau_scale,
  validate_config,
)
from mopoe_jax.vae import model as model_lib
from mopoe_jax.vae import objective


class NonFiniteError(RuntimeError):
  """Raised when training produced a non-finite loss or gradient."""


class Preempted(RuntimeError):
  """Raised after SIGTERM (or an Orbax preemption notice) once the checkpoint is saved."""

  def __init__(self, step: int, checkpoint_dir: str):
    super().__init__(
      f"Preempted at step {step}; the checkpoint of step {step} is in "
      f"{checkpoint_dir}. Rerun the same command to resume."
    )
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

  def update(
    self, eval_loss: float, patience: int, factor: float, min_scale: float, step: int | None = None
  ) -> bool:
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
    where = (
      f"the last good checkpoint is step {last} in {manager.directory}"
      if last is not None
      else "no checkpoint was saved before it"
    )
    raise NonFiniteError(
      f"Training diverged: the loss or a gradient was not finite at step {bad}; {where}. "
      "Nothing after that step was applied. Lower --config.train.learning_rate, lengthen "
      "--config.train.warmup_steps, or bound the log-variances with "
      "--config.model.logvar_bound=10."
    )


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _mean_metrics(history: list) -> dict:
  host = jax.device_get(history)
  return {k: float(np.mean([h[k] for h in host])) for k in host[0]}


EVAL_KEYS = MODEL_KEYS + ("valid",)  # what the eval step reads of a batch


def evaluate_loss(
  eval_step_fn, state, data: DataSource, config, mesh, num_batches: int | None
) -> dict:
  """Mean eval terms over (the first ``num_batches`` batches of) the eval split."""
  it = data.eval_batches(config.data.eval_split, batch_size=config.train.batch_size)
  totals = None
  for i, batch in enumerate(it):
    if num_batches is not None and i >= num_batches:
      break
    batch = {k: batch[k] for k in EVAL_KEYS}
    sums = jax.device_get(eval_step_fn(state, sharding.to_global_batch(batch, mesh)))
    totals = sums if totals is None else {k: totals[k] + sums[k] for k in sums}
  if totals is None:
    raise ValueError(f"The eval split {config.data.eval_split!r} of {config.data.name} is empty.")
  return {k: float(v) for k, v in objective.means(totals).items()}


def num_train_steps(config, data: DataSource) -> tuple[int, int]:
  """(total steps, steps per epoch) from num_steps or num_epochs and the train split size."""
  n = data.num_examples(config.data.train_split)
  steps_per_epoch = n // config.train.batch_size
  if steps_per_epoch == 0:
    raise ValueError(
      f"The train split has {n} usable studies, fewer than one batch of "
      f"{config.train.batch_size}; lower --config.train.batch_size."
    )
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


def _check_newest_checkpoint(manager, config, fields: dict) -> int | None:
  """Checks the recorded fields of the newest checkpoint whose metadata reads against the config
  (raises `fingerprint.MismatchError`), so that a refused run stops before anything compiles;
  returns its step (None: no checkpoint's metadata reads)."""
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      meta = checkpointing.read_meta(manager, step)
    except Exception:  # pylint: disable=broad-exception-caught  # damaged: restore says why
      continue
    fingerprint.check(
      meta, config, fields, step=step, directory=str(manager.directory), resuming=True
    )
    return step
  return None


def _resume(manager, abstract, config, fields: dict, workdir: str):
  """(state, meta) of the newest checkpoint that restores; (None, None) without checkpoints.

  ``abstract``: the train state's shapes and shardings. Each step's recorded fields are checked
  before any of its arrays is read; newer steps that cannot be read are set aside (moved to
  ``<workdir>/checkpoints_damaged``) so that they can be saved again.
  """
  if not manager.all_steps():
    return None, None

  def check(step, meta):
    fingerprint.check(
      meta, config, fields, step=step, directory=str(manager.directory), resuming=True
    )

  _, state, meta, failures = checkpointing.restore_newest(
    manager, lambda step: checkpointing.restore_train_state(manager, abstract, step), check
  )
  checkpointing.set_aside(manager, [step for step, _ in failures], workdir)
  bad_step = jax.device_put(jnp.asarray(-1, jnp.int32), abstract.bad_step.sharding)
  return state.replace(bad_step=bad_step), meta


# The loop's last finished evaluation, beside the checkpoints: a checkpoint is written before its
# step's evaluation (``eval_due`` in its metadata), and this file says whether that evaluation
# then finished, so that a resumed run does not evaluate the same step again.
EVALUATED_FILE = "loop_evaluated.json"


def _record_evaluated(workdir: str, step: int, metrics: dict) -> None:
  if jax.process_index() == 0:
    paths.write_text(
      paths.join(paths.resolve(workdir), EVALUATED_FILE),
      json.dumps({"step": step, "eval": metrics}),
    )


def _finished_evaluation(workdir: str, meta: dict | None) -> dict | None:
  """The eval metrics of the restored checkpoint's step when its evaluation was due at the save
  and finished since (`EVALUATED_FILE`); None otherwise. Process 0's file decides for every
  process."""
  metrics = None
  if meta is not None and meta.get("eval_due"):
    path = paths.join(paths.resolve(workdir), EVALUATED_FILE)
    if paths.exists(path):
      record = json.loads(paths.read_text(path))
      if record.get("step") == meta["data_position"]:
        metrics = record["eval"]
  if jax.process_count() > 1:
    loss = multihost_utils.broadcast_one_to_all(
      np.float64(math.nan if metrics is None else metrics["loss"])
    )
    metrics = None if math.isnan(float(loss)) else {**(metrics or {}), "loss": float(loss)}
  return metrics


def _save_after_error(
  manager, state, meta: dict, step: int, saved_step: int, error: BaseException
) -> None:
  """Saves the state of ``step`` (when finite and not saved yet) before ``error`` propagates."""
  reason = checkpointing.failure_reason(error)
  try:
    manager.wait_until_finished()
    if step == saved_step:
      logging.error(
        "Stopping on %s; the state of step %d is in its checkpoint in %s.",
        reason,
        step,
        manager.directory,
      )
    elif jax.process_count() > 1:
      logging.error(
        "Stopping on %s; the state of step %d is not saved (with several processes "
        "a save needs all of them); the last checkpoint is step %s in %s.",
        reason,
        step,
        manager.latest_step(),
        manager.directory,
      )
    elif int(jax.device_get(state.bad_step)) >= 0:
      logging.error(
        "Stopping on %s; the state of step %d is not finite, not saved; the last "
        "checkpoint is step %s in %s.",
        reason,
        step,
        manager.latest_step(),
        manager.directory,
      )
    else:
      checkpointing.save(manager, state, meta, force=True)
      manager.wait_until_finished()
      logging.error(
        "Stopping on %s; saved the state of step %d to %s first (rerun the same "
        "command to resume from it).",
        reason,
        step,
        manager.directory,
      )
    manager.close()
  except Exception as e:  # pylint: disable=broad-exception-caught
    logging.error(
      "Stopping on %s; could not save the state of step %d (%s); the last "
      "checkpoint is step %s in %s.",
      reason,
      step,
      checkpointing.failure_reason(e),
      manager.latest_step(),
      manager.directory,
    )


@dataclasses.dataclass
class _Loop:
  """The loop's state between steps: the train state and its step, the last saved step, whether
  an evaluation is due, the plateau tracker and the best step it keeps, the metrics since the
  last log line, the training clock, the last evaluation."""

  config: ml_collections.ConfigDict
  workdir: str
  data: DataSource
  writer: Any
  manager: Any
  mesh: Any
  fields: dict
  total_steps: int
  # state -> the compiled eval step, and state -> the image grids (None: no grids), called by
  # `prepare_evaluation`: at the start when there is training left (they compile while the train
  # step compiles in the background), else at the first evaluation (none: neither compiles).
  make_eval_step: Callable[[Any], Any]
  make_grids: Callable[[Any], TrainingGrids] | None
  plateau: Plateau
  keep_best: checkpointing.KeepStep
  state: Any = None
  step: int = 0
  saved_step: int = -1  # the step of the newest checkpoint this run wrote or resumed from
  eval_pending: bool = False  # the evaluation of ``step`` is due (its checkpoint says so)
  history: list = dataclasses.field(default_factory=list)
  tic: float = 0.0  # time.time() at the start of the logged interval (set when training starts)
  data_seconds: float = 0.0  # of the logged interval, spent waiting for the next batch
  step_flops: float | None = None  # per device and step (XLA's cost analysis)
  last_eval: dict | None = None
  _eval_step: Any = None
  _grids: TrainingGrids | None = None

  def next_batch(self, train_iter) -> dict:
    """The next global batch of the model's keys; the wait counts as waiting for data."""
    tic = time.time()
    batch = sharding.to_global_batch(
      {k: v for k, v in next(train_iter).items() if k in MODEL_KEYS}, self.mesh
    )
    self.data_seconds += time.time() - tic
    return batch

  def meta(self, step: int, eval_due: bool) -> dict:
    """A checkpoint's metadata at ``step``."""
    p = self.plateau
    return {
      "fields": self.fields,
      "plateau_best": p.best,
      "plateau_bad_evals": p.bad_evals,
      "plateau_scale": p.scale,
      "plateau_best_step": p.best_step,
      "data_position": step,
      "eval_due": eval_due,
    }

  def prepare_evaluation(self) -> None:
    """Compiles the eval step and the image grids (once)."""
    if self._eval_step is None:
      self._eval_step = self.make_eval_step(self.state)
      if self.make_grids is not None:
        self._grids = self.make_grids(self.state)

  def evaluate(self) -> None:
    """Eval loss, grids and the plateau tracker at the current step (the learning rate may be
    re-scaled); its time is left out of the training clock (steps/s counts training time
    only). Recorded as finished (`EVALUATED_FILE`) so that a resumed run does not repeat it."""
    t, eval_tic = self.config.train, time.time()
    self.prepare_evaluation()
    metrics = evaluate_loss(
      self._eval_step, self.state, self.data, self.config, self.mesh, t.eval_batches
    )
    self.writer.write_scalars(self.step, {f"eval_{k}": v for k, v in metrics.items()})
    if self._grids is not None:
      self.writer.write_images(self.step, self._grids(self.state))
    logging.info(
      "eval at step %d: loss %.2f (%.1f s)", self.step, metrics["loss"], time.time() - eval_tic
    )
    self.apply_evaluation(metrics)
    self.tic += time.time() - eval_tic
    _record_evaluated(self.workdir, self.step, metrics)

  def apply_evaluation(self, metrics: dict) -> None:
    """The plateau tracker (and the learning rate) after the current step's evaluation."""
    t = self.config.train
    if self.plateau.update(
      metrics["loss"], t.plateau_patience, t.plateau_factor, t.plateau_min_scale, step=self.step
    ):
      self.state = set_plateau_scale(self.state, self.plateau.scale)
      logging.info(
        "Eval loss has not improved for %d evaluations: learning-rate factor now %.3g.",
        t.plateau_patience,
        self.plateau.scale,
      )
    self.keep_best.step = self.plateau.best_step
    self.last_eval, self.eval_pending = metrics, False

  def log(self) -> None:
    """Checks the state is finite, writes and logs the mean metrics since the last call."""
    step = self.step
    _check_finite(self.state, self.manager)
    summary = _mean_metrics(self.history)
    device_kind = jax.local_devices()[0].device_kind
    summary.update(
      speed.interval_figures(
        steps=len(self.history),
        seconds=time.time() - self.tic,
        data_seconds=self.data_seconds,
        global_batch=self.config.train.batch_size,
        step_flops=self.step_flops,
        device_kind=device_kind,
        memory=speed.device_memory(),
      )
    )
    self.history, self.tic, self.data_seconds = [], time.time(), 0.0
    self.writer.write_scalars(step, {f"train_{k}": v for k, v in summary.items()})
    logging.info(
      "step %d/%d: loss %.2f (rec %.2f, kl %.2f), %s, lr %.2e, ETA %s",
      step,
      self.total_steps,
      summary["loss"],
      summary["rec"],
      summary["kl"],
      speed.describe(summary, device_kind),
      summary["learning_rate"],
      _duration((self.total_steps - step) / summary["steps_per_second"]),
    )

  def train(self, train_step_fn, train_iter, step_rng, preemption, profile, started) -> None:
    """Trains from the current step to the last one, or until a preemption is requested;
    ``started``: `time.perf_counter` when `train_and_evaluate` began, for the log."""
    start_step, stop = self.step, False
    # XLA:CPU collectives have dead-locked when tiny sharded steps run back to back: on CPU,
    # wait for each step's result (the CPU is busy computing it anyway).
    sync_each_step = jax.default_backend() == "cpu"
    while self.step < self.total_steps and not stop:
      self.state, metrics = train_step_fn(self.state, self.next_batch(train_iter), step_rng)
      if sync_each_step or self.step == start_step:
        jax.block_until_ready(metrics["loss"])
      self.history.append(metrics)
      self.step += 1
      if self.step == start_step + 1:
        logging.info(
          "First step done %.1f s after training started (state, compiles, data).",
          time.perf_counter() - started,
        )
      if profile is not None:
        profile(self.step)
      stop = preemption.requested or self.manager.reached_preemption(self.step)
      self.after_step(stop)

  def after_step(self, stop: bool) -> None:
    """Logs, checkpoints and evaluates as the step's number says (all three when stopping, but
    the evaluation, which waits for the resumed run)."""
    t, step = self.config.train, self.step
    last = step == self.total_steps
    if step % t.log_every_steps == 0 or last or stop:
      self.log()
    self.eval_pending = step % t.eval_every_steps == 0 or last
    if step % t.checkpoint_every_steps == 0 or last or stop:
      _check_finite(self.state, self.manager)
      checkpointing.save(self.manager, self.state, self.meta(step, self.eval_pending), force=stop)
      self.saved_step = step
    if self.eval_pending and not stop:
      self.evaluate()


@contextlib.contextmanager
def _saving_on_error(loop: _Loop):
  """Saves the loop's current state (`_save_after_error`) before any exception propagates."""
  try:
    yield
  except (Exception, KeyboardInterrupt) as error:
    meta = loop.meta(loop.step, loop.eval_pending)
    _save_after_error(loop.manager, loop.state, meta, loop.step, loop.saved_step, error)
    raise


def _start(programs: programs_lib.Programs, init_rng, state, meta, keep_best, manager):
  """(state, plateau) to train from: a new state, or the restored one with its plateau."""
  if meta is None:
    return programs.init_state(init_rng), Plateau()
  plateau = Plateau(
    best=meta["plateau_best"],
    bad_evals=meta["plateau_bad_evals"],
    scale=meta["plateau_scale"],
    best_step=meta.get("plateau_best_step"),
  )
  keep_best.step = plateau.best_step
  logging.info("Resumed from step %d of %s.", int(state.step), manager.directory)
  return state, plateau


def _announce(
  config, workdir: str, data: DataSource, writer, state, total_steps: int, steps_per_epoch: int
) -> None:
  if int(state.step) == 0:
    writer.write_hparams(_flat_hparams(config))
  model_file.write(workdir, config, data.vocab.words, data.name)  # the model without the data
  logging.info(
    "Training %s on %s: %d steps (%d per epoch), global batch %d over %d "
    "device(s) of %d process(es), %s parameters.",
    config.model.variant,
    data.name,
    total_steps,
    steps_per_epoch,
    config.train.batch_size,
    jax.device_count(),
    jax.process_count(),
    f"{sum(x.size for x in jax.tree.leaves(state.params)):,}",
  )


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, data: DataSource, writer
) -> TrainState:
  """Trains (resuming from the newest checkpoint in ``workdir``) and returns the final state.

  Args:
    config: the run's config.
    workdir: checkpoints go to ``<workdir>/checkpoints``.
    data: the prepared dataset (`input_pipeline.tfds_source.load`); on several hosts,
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
  config = for_devices(config, jax.device_count())
  validate_config(config, jax.device_count())
  t = config.train
  model = model_lib.create_model(config, len(data.vocab))
  step_config = StepConfig.from_config(config, model, pad_id=data.vocab.pad_id)
  mesh = sharding.make_data_mesh()
  total_steps, steps_per_epoch = num_train_steps(config, data)
  fields = fingerprint.fields(
    config, dataset=data.name, vocab_size=len(data.vocab), process_count=jax.process_count()
  )
  init_rng, step_rng = jax.random.split(jax.random.PRNGKey(t.seed))
  keep_best = checkpointing.KeepStep()
  manager = checkpointing.create_manager(workdir, keep=t.keep_checkpoints, keep_step=keep_best)
  newest = _check_newest_checkpoint(manager, config, fields)  # a refused run compiles nothing
  # The train step compiles in the background while the state is initialised or restored;
  # not when the newest checkpoint is of the last step (a rerun that only evaluates).
  training_left = newest is None or newest < total_steps
  programs = programs_lib.Programs.build(
    config, model, step_config, mesh, init_rng, step_rng if training_left else None
  )
  state, meta = _resume(manager, programs.abstract, config, fields, workdir)
  state, plateau = _start(programs, init_rng, state, meta, keep_best, manager)
  _announce(config, workdir, data, writer, state, total_steps, steps_per_epoch)
  loop = _Loop(
    config,
    workdir,
    data,
    writer,
    manager,
    mesh,
    fields,
    total_steps,
    lambda state: programs.eval_step(state, t.batch_size),
    functools.partial(TrainingGrids, model, config, data, mesh=mesh)
    if t.image_grid_studies
    else None,
    plateau,
    keep_best,
    state=state,
    step=int(state.step),
    saved_step=int(state.step) if meta is not None else -1,
    eval_pending=bool(meta is not None and meta.get("eval_due")),
  )
  finished_eval = _finished_evaluation(workdir, meta)
  train_iter = train_step_fn = None
  if loop.step < total_steps:  # (a newer checkpoint that did not restore: compiles only now)
    programs.compile_step(step_rng)
    loop.prepare_evaluation()  # while the train step compiles
    train_iter = data.train_batches(
      global_batch_size=t.batch_size, seed=t.seed, start_step=loop.step
    )
    train_step_fn = programs.train_step()
    loop.step_flops = programs.train_step_flops()
  else:
    logging.info("Trained to step %d already: no train step to compile.", loop.step)
  profile = speed.StepProfile(workdir, loop.step, t.profile_steps) if t.profile_steps else None
  loop.tic = time.time()
  with (
    _Preemption() as preemption,
    _saving_on_error(loop),
    contextlib.closing(profile) if profile else contextlib.nullcontext(),
  ):
    if finished_eval is not None:  # its scalars are written; the plateau tracker needs its loss
      loop.apply_evaluation(finished_eval)
    elif loop.eval_pending:
      logging.info("Running the evaluation of step %d, which had not finished.", loop.step)
      loop.evaluate()
    loop.train(train_step_fn, train_iter, step_rng, preemption, profile, started)
  manager.wait_until_finished()
  manager.close()
  writer.flush()
  del train_iter
  if loop.step < total_steps:
    raise Preempted(loop.step, str(manager.directory))
  if loop.last_eval is not None:
    logging.info("Final eval loss %.3f at step %d.", loop.last_eval["loss"], loop.step)
  return loop.state
