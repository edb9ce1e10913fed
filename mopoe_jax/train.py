"""Training: a pure, data-parallel, jit-compiled step and the loop around it.

``train_step(state, batch, rng) -> (state, metrics)`` is compiled once with ``jax.jit`` over a
``('data',)`` mesh: the batch is sharded over the devices, the state replicated, so BatchNorm
statistics and the loss are computed over the global batch (XLA inserts the all-reduces).
The loop resumes from the newest checkpoint of the workdir, data position included, saves on
SIGTERM, and stops with an error naming the step when the loss or a gradient is not finite.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import signal
import time
from typing import Any

from absl import logging
from clu import metric_writers
from clu import periodic_actions
from flax.training import train_state as flax_train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from mopoe_jax import checkpointing, model as model_lib, objective, subsets, visualize
from input_pipeline import pipeline


class TrainState(flax_train_state.TrainState):
  batch_stats: Any
  # Step at which a non-finite loss or gradient was first seen (-1: never). From then on the
  # step leaves the parameters alone, so the state stays the last good one.
  bad_step: jax.Array


class NonFiniteError(RuntimeError):
  """Raised when training produced a non-finite loss or gradient."""


class Preempted(RuntimeError):
  """Raised after SIGTERM (or an Orbax preemption notice) once the checkpoint is saved."""

  def __init__(self, step: int, checkpoint_dir: str):
    super().__init__(f"Preempted at step {step}; the checkpoint of step {step} is in "
                     f"{checkpoint_dir}. Rerun the same command to resume.")
    self.step = step


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """The static, hashable part of the config that the jitted step closes over."""
  modalities: tuple
  subset_names: tuple
  rec_weights: tuple
  beta: float
  image_scale: float
  mask_text_padding: bool
  learning_rate: float
  warmup_steps: int

  def schedule(self) -> optax.Schedule:
    return learning_rate_schedule(self.learning_rate, self.warmup_steps)

  @classmethod
  def from_config(cls, config, model: model_lib.MoPoE) -> "StepConfig":
    return cls(modalities=tuple(config.data.modalities),
               subset_names=tuple(subsets.subset_names(config.data.modalities, model.mask)),
               rec_weights=tuple(float(w) for w in config.model.rec_weights),
               beta=float(config.model.beta), image_scale=float(config.model.image_scale),
               mask_text_padding=bool(config.model.mask_text_padding),
               learning_rate=float(config.train.learning_rate),
               warmup_steps=int(config.train.warmup_steps))


# ---------------------------------------------------------------------------------------------
# Config checks: everything that can be wrong is reported before anything compiles.


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises ValueError naming the field and what to change when the config is inconsistent."""
  d, m, t = config.data, config.model, config.train
  unknown = [x for x in d.modalities if x not in model_lib.DATA_MODALITIES]
  if unknown or not d.modalities:
    raise ValueError(f"config.data.modalities={tuple(d.modalities)}: each must be one of "
                     f"{model_lib.DATA_MODALITIES}.")
  if len(m.rec_weights) != len(d.modalities):
    raise ValueError(
        f"config.model.rec_weights has {len(m.rec_weights)} entries for "
        f"{len(d.modalities)} modalities {tuple(d.modalities)}; give one weight each.")
  pipeline.check_batch_divisible(t.batch_size, num_devices)
  num_subsets = len(subsets.variant_mask(m.variant, len(d.modalities)))
  if m.assignment == "slice" and t.batch_size < num_subsets:
    raise ValueError(
        f"config.train.batch_size={t.batch_size} is smaller than the {num_subsets} subsets of "
        f"variant {m.variant!r}; the 'slice' assignment needs one row per subset. Use "
        f"--config.train.batch_size={num_subsets} or more, or --config.model.assignment=random.")
  if t.learning_rate <= 0 or t.warmup_steps < 0:
    raise ValueError(f"config.train.learning_rate must be > 0 and warmup_steps >= 0, got "
                     f"{t.learning_rate} and {t.warmup_steps}.")
  for name in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
    if t[name] <= 0:
      raise ValueError(f"config.train.{name} must be positive, got {t[name]}.")
  # Geometry and the remaining choices are checked by building the model (no compilation).
  model_lib.model_from_config(m, modalities=d.modalities, image_size=d.image_size,
                              text_length=d.text_length, vocab_size=8)


def check_dataset_matches(config, builder) -> None:
  """The prepared dataset must have the image size and text length the config asks for."""
  feats = builder.info.features
  size = feats["frontal"].shape[0]
  length = feats["text"].shape[0]
  if size != config.data.image_size or length != config.data.text_length:
    raise ValueError(
        f"Dataset {config.data.name} has {size} px images and {length}-token texts, but the "
        f"config asks for {config.data.image_size} px and {config.data.text_length} tokens. "
        f"Set --config.data.image_size={size} --config.data.text_length={length} (and widths "
        "that fit), or choose a dataset config of the wanted size.")


def config_fingerprint(config) -> str:
  """A short hash of what fixes the parameter shapes; a checkpoint of another shape says so."""
  keys = {"data": {k: config.data[k] for k in ("modalities", "image_size", "text_length")},
          "model": {k: config.model[k] for k in (
              "latent_dim", "image_encoder_widths", "image_decoder_widths",
              "text_encoder_widths", "text_decoder_widths", "variant")}}
  blob = json.dumps(keys, sort_keys=True, default=list)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Model, optimizer, state.


def create_model(config, vocab_size: int) -> model_lib.MoPoE:
  d = config.data
  return model_lib.model_from_config(config.model, modalities=d.modalities,
                                     image_size=d.image_size, text_length=d.text_length,
                                     vocab_size=vocab_size)


def learning_rate_schedule(learning_rate: float, warmup_steps: int) -> optax.Schedule:
  """Linear warm-up from learning_rate / warmup_steps to learning_rate, then constant."""
  if warmup_steps == 0:
    return optax.constant_schedule(learning_rate)
  return optax.linear_schedule(learning_rate / warmup_steps, learning_rate, warmup_steps)


def create_optimizer(config) -> optax.GradientTransformation:
  """Adam with a linear warm-up, then a plateau factor that the loop lowers (SPEC §5)."""
  t = config.train
  return optax.chain(
      optax.adam(learning_rate_schedule(t.learning_rate, t.warmup_steps), b1=t.b1, b2=t.b2),
      optax.inject_hyperparams(optax.scale)(step_size=1.0))


def plateau_scale(opt_state) -> jax.Array:
  return opt_state[1].hyperparams["step_size"]


def set_plateau_scale(state: TrainState, value: float) -> TrainState:
  opt_state = state.opt_state
  hyper = dict(opt_state[1].hyperparams)
  hyper["step_size"] = jnp.asarray(value, hyper["step_size"].dtype)
  # Keep the sharding of the old value so that the jitted step does not recompile.
  hyper["step_size"] = jax.device_put(hyper["step_size"],
                                      opt_state[1].hyperparams["step_size"].sharding)
  new_opt = (opt_state[0], opt_state[1]._replace(hyperparams=hyper)) + tuple(opt_state[2:])
  return state.replace(opt_state=new_opt)


def dummy_batch(config, batch_size: int) -> dict:
  s, t = config.data.image_size, config.data.text_length
  return {"frontal": np.zeros((batch_size, s, s, 1), np.uint8),
          "lateral": np.zeros((batch_size, s, s, 1), np.uint8),
          "text": np.zeros((batch_size, t), np.int32),
          "available": np.ones((batch_size, 3), bool)}


def init_state(model, config, rng) -> TrainState:
  """Initial parameters, batch statistics and optimizer state (call under jit)."""
  batch = dummy_batch(config, max(8, len(model.mask)))
  inputs, available = model_lib.inputs_from_batch(batch, config.data.modalities)
  params_rng, sample_rng, dropout_rng = jax.random.split(rng, 3)
  variables = model.init({"params": params_rng, "sample": sample_rng, "dropout": dropout_rng},
                         inputs, available, False)
  return TrainState.create(apply_fn=model.apply, params=variables["params"],
                           batch_stats=variables["batch_stats"], tx=create_optimizer(config),
                           bad_step=jnp.asarray(-1, jnp.int32))


# ---------------------------------------------------------------------------------------------
# The step.


def _terms(model, step_config: StepConfig, variables, batch, rng, train: bool):
  inputs, available = model_lib.inputs_from_batch(batch, step_config.modalities)
  sample_rng, dropout_rng = jax.random.split(rng)
  result = model.apply(variables, inputs, available, train,
                       rngs={"sample": sample_rng, "dropout": dropout_rng},
                       mutable=["batch_stats"] if train else False)
  out, updates = result if train else (result, {})
  terms = objective.loss_terms(
      out, inputs, available, modalities=step_config.modalities,
      rec_weights=step_config.rec_weights, beta=step_config.beta,
      image_scale=step_config.image_scale, mask_text_padding=step_config.mask_text_padding)
  return terms, available, updates


def train_step(state: TrainState, batch: dict, rng, *, model, step_config: StepConfig):
  """One optimizer step on a global batch; returns (new state, metrics)."""
  rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    terms, available, updates = _terms(model, step_config, variables, batch, rng, True)
    loss, metrics = objective.reduce_terms(terms, step_config.subset_names, available)
    return loss, (metrics, updates["batch_stats"])

  (loss, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (state.bad_step < 0)
  # A non-finite step changes nothing but the step counter and records where it happened.
  # lax.cond runs one branch: the update stays in place in the donated buffers, where a
  # tree-wide jnp.where(finite, new, old) kept both versions alive (copies of the Adam moments).
  new_state = jax.lax.cond(
      finite, lambda s: s.apply_gradients(grads=grads, batch_stats=batch_stats),
      lambda s: s.replace(step=s.step + 1), state)
  bad_step = jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step)
  new_state = new_state.replace(bad_step=bad_step.astype(jnp.int32))
  learning_rate = step_config.schedule()(state.step) * plateau_scale(state.opt_state)
  metrics = dict(metrics, grad_norm=grad_norm, learning_rate=learning_rate,
                 finite=finite.astype(jnp.float32))
  return new_state, metrics


def eval_step(state: TrainState, batch: dict, *, model, step_config: StepConfig):
  """Sums of the per-example terms over the batch's valid rows (eval mode, fixed rng)."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  terms, available, _ = _terms(model, step_config, variables, batch, jax.random.PRNGKey(0),
                               False)
  valid = batch["valid"].astype(jnp.float32) * terms.weight
  sums = {"loss": jnp.sum(valid * terms.total), "rec": jnp.sum(valid * terms.rec),
          "kl": jnp.sum(valid * terms.kl), "count": jnp.sum(valid)}
  for i, m in enumerate(step_config.modalities):
    has = valid * available[:, i].astype(jnp.float32)
    sums[f"nll/{m}"] = jnp.sum(has * terms.nll[m])
    sums[f"count/{m}"] = jnp.sum(has)
  return sums


# ---------------------------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class Plateau:
  """Reduce-on-plateau of the eval loss (SPEC §5); its state travels in the checkpoint."""
  best: float = math.inf
  bad_evals: int = 0
  scale: float = 1.0

  def update(self, eval_loss: float, patience: int, factor: float, min_scale: float) -> bool:
    """Records an evaluation; True when the learning rate should drop now."""
    if eval_loss < self.best:
      self.best, self.bad_evals = eval_loss, 0
      return False
    self.bad_evals += 1
    if self.bad_evals < patience or self.scale <= min_scale:
      return False
    self.scale, self.bad_evals = max(self.scale * factor, min_scale), 0
    return True


class _Preemption:
  """Turns SIGTERM into a flag that the loop checks after each step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
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


def _mean_metrics(history: list) -> dict:
  host = jax.device_get(history)
  return {k: float(np.mean([h[k] for h in host])) for k in host[0]}


EVAL_KEYS = ("frontal", "lateral", "text", "available", "valid")


def evaluate_loss(p_eval, state, builder, config, mesh, num_batches: int | None) -> dict:
  """Mean eval terms over (the first ``num_batches`` batches of) the eval split."""
  it = pipeline.eval_iterator(builder, config.data, config.data.eval_split,
                              batch_size=config.train.batch_size)
  totals = None
  for i, batch in enumerate(it):
    if num_batches is not None and i >= num_batches:
      break
    batch = {k: batch[k] for k in EVAL_KEYS}
    sums = jax.device_get(p_eval(state, pipeline.to_global_batch(batch, mesh)))
    totals = sums if totals is None else {k: totals[k] + sums[k] for k in sums}
  if totals is None:
    raise ValueError(f"The eval split {config.data.eval_split!r} of {config.data.name} is empty.")
  out = {k: totals[k] / max(totals["count"], 1.0) for k in ("loss", "rec", "kl")}
  for m in config.data.modalities:
    out[f"nll/{m}"] = totals[f"nll/{m}"] / max(totals[f"count/{m}"], 1.0)
  return {k: float(v) for k, v in out.items()}


# XLA options for programs that run a handful of times (init, eval, image grids): compiling
# them without backend optimizations takes seconds instead of minutes on CPU.
FAST_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0,
                        "xla_llvm_disable_expensive_passes": True}


def compile_fast(jitted, *example_args):
  """Compiles ``jitted`` for ``example_args`` (arrays or shape structs) with FAST_COMPILE_OPTIONS."""
  return jitted.lower(*example_args).compile(compiler_options=FAST_COMPILE_OPTIONS)


def subset_means_decoded(model, variables, inputs, available) -> dict:
  """Decodes the posterior mean of every subset: modality -> [K, B, ...] (eval mode)."""
  _, _, mu_k, _ = model.apply(variables, inputs, available, False, method=model.posteriors)
  k, b, d = mu_k.shape
  outputs = model.apply(variables, mu_k.reshape(k * b, d), False, method=model.decode)
  return {m: o.reshape(k, b, *o.shape[1:]) for m, o in outputs.items()}


class TrainingGrids:
  """Generation grids for TensorBoard: per image modality, the given views above a line, then
  the decoded posterior mean of every subset (one row per subset, one column per study)."""

  def __init__(self, model, config, builder, state):
    self._model = model
    self._modalities = tuple(config.data.modalities)
    n = config.train.image_grid_studies
    it = pipeline.eval_iterator(builder, config.data, config.data.eval_split, batch_size=n)
    batch = next(it)
    self._batch = {k: v for k, v in batch.items() if k in ("frontal", "lateral", "text",
                                                            "available")}
    self._fn = compile_fast(jax.jit(self._generate), self._variables(state), self._batch)

  @staticmethod
  def _variables(state) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}

  def _generate(self, variables, batch):
    inputs, available = model_lib.inputs_from_batch(batch, self._modalities)
    return subset_means_decoded(self._model, variables, inputs, available)

  def __call__(self, state) -> dict:
    decoded = jax.device_get(self._fn(self._variables(state), self._batch))
    images = {}
    for i, m in enumerate(self._modalities):
      if model_lib.is_text(m):
        continue
      rows = [self._batch[m]] + list(decoded[m])
      available = [self._batch["available"][:, model_lib.DATA_MODALITIES.index(m)]]
      images[f"generation/{m}"] = visualize.image_grid(
          rows, available=available + [None] * (len(rows) - 1), separator_after=1)[None]
    return images


def num_train_steps(config, builder) -> tuple[int, int]:
  """(total steps, steps per epoch) from num_steps or num_epochs and the train split size."""
  n = pipeline.num_examples(builder, config.data.train_split,
                            require_complete=config.data.require_complete)
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (resuming from the newest checkpoint in ``workdir``) and returns the final state.

  Raises:
    Preempted: after SIGTERM, once the checkpoint of the current step is saved.
    NonFiniteError: when a loss or gradient was not finite (names the step).
  """
  if config.train.multihost:
    jax.distributed.initialize()
  validate_config(config, jax.device_count())
  builder = pipeline.get_builder(config.data)
  check_dataset_matches(config, builder)
  vocab = pipeline.load_vocabulary(builder)
  model = create_model(config, len(vocab))
  step_config = StepConfig.from_config(config, model)
  mesh = pipeline.make_data_mesh()
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  total_steps, steps_per_epoch = num_train_steps(config, builder)

  rng = jax.random.PRNGKey(config.train.seed)
  init_rng, step_rng = jax.random.split(rng)
  state = compile_fast(jax.jit(functools.partial(init_state, model, config),
                               out_shardings=replicated), init_rng)(init_rng)
  fingerprint = config_fingerprint(config)
  manager = checkpointing.create_manager(workdir, keep=config.train.keep_checkpoints)
  plateau = Plateau()
  if manager.latest_step() is not None:
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
                            if isinstance(x, jax.Array) else x, state)
    state, meta = checkpointing.restore_train_state(manager, abstract)
    if meta.get("fingerprint") != fingerprint:
      raise ValueError(
          f"The checkpoints in {manager.directory} were written with another model shape "
          f"(config fingerprint {meta.get('fingerprint')} vs {fingerprint} now). Use a new "
          "--workdir or the config those checkpoints were trained with.")
    plateau = Plateau(best=meta["plateau_best"], bad_evals=meta["plateau_bad_evals"],
                      scale=meta["plateau_scale"])
    state = state.replace(bad_step=jnp.asarray(-1, jnp.int32))
    logging.info("Resumed from step %d of %s.", int(state.step), manager.directory)
  start_step = int(state.step)

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams(_flat_hparams(config))
  logging.info("Training %s on %s: %d steps (%d per epoch), global batch %d over %d "
               "device(s), %s parameters.", config.model.variant, config.data.name, total_steps,
               steps_per_epoch, config.train.batch_size, jax.device_count(),
               f"{sum(x.size for x in jax.tree.leaves(state.params)):,}")

  p_train = jax.jit(functools.partial(train_step, model=model, step_config=step_config),
                    in_shardings=(replicated, sharded, replicated),
                    out_shardings=(replicated, replicated), donate_argnums=(0,))
  eval_batch_shape = jax.eval_shape(lambda: dict(
      dummy_batch(config, config.train.batch_size),
      valid=np.ones((config.train.batch_size,), bool)))
  eval_batch_shape = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharded)
                      for k, v in eval_batch_shape.items()}
  p_eval = compile_fast(
      jax.jit(functools.partial(eval_step, model=model, step_config=step_config),
              in_shardings=(replicated, sharded), out_shardings=replicated),
      state, eval_batch_shape)
  grids = TrainingGrids(model, config, builder, state)

  train_iter = pipeline.train_iterator(builder, config.data,
                                       global_batch_size=config.train.batch_size,
                                       seed=config.train.seed, start_step=start_step)
  report = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)
  # XLA:CPU collectives have dead-locked when tiny sharded steps run back to back: on CPU, wait
  # for each step's result (the CPU is busy computing it anyway).
  sync_each_step = jax.default_backend() == "cpu"
  t = config.train
  history, last_eval, tic = [], None, time.time()

  def meta() -> dict:
    return {"fingerprint": fingerprint, "plateau_best": plateau.best,
            "plateau_bad_evals": plateau.bad_evals, "plateau_scale": plateau.scale,
            "data_position": int(jax.device_get(state.step)), "dataset": config.data.name,
            "vocab_size": len(vocab)}

  with _Preemption() as preemption:
    step = start_step
    while step < total_steps:
      batch = pipeline.to_global_batch(next(train_iter), mesh)
      state, metrics = p_train(state, batch, step_rng)
      if sync_each_step:
        jax.block_until_ready(metrics["loss"])
      history.append(metrics)
      step += 1
      report(step)
      stop = preemption.requested or manager.reached_preemption(step)
      if step % t.log_every_steps == 0 or step == total_steps or stop:
        _check_finite(state, manager)
        summary = _mean_metrics(history)
        history = []
        summary["steps_per_second"] = t.log_every_steps / max(time.time() - tic, 1e-9)
        tic = time.time()
        writer.write_scalars(step, {f"train_{k}": v for k, v in summary.items()})
        logging.info("step %d/%d: loss %.2f (rec %.2f, kl %.2f), %.2f steps/s, lr %.2e",
                     step, total_steps, summary["loss"], summary["rec"], summary["kl"],
                     summary["steps_per_second"], summary["learning_rate"])
      eval_metrics = None
      if step % t.eval_every_steps == 0 or step == total_steps:
        with report.timed("eval"):
          eval_metrics = evaluate_loss(p_eval, state, builder, config, mesh, t.eval_batches)
          writer.write_scalars(step, {f"eval_{k}": v for k, v in eval_metrics.items()})
          writer.write_images(step, grids(state))
        last_eval = eval_metrics
        logging.info("eval at step %d: loss %.2f", step, eval_metrics["loss"])
        if plateau.update(eval_metrics["loss"], t.plateau_patience, t.plateau_factor,
                          t.plateau_min_scale):
          state = set_plateau_scale(state, plateau.scale)
          logging.info("Eval loss has not improved for %d evaluations: learning-rate factor "
                       "now %.3g.", t.plateau_patience, plateau.scale)
      if step % t.checkpoint_every_steps == 0 or step == total_steps or stop:
        _check_finite(state, manager)
        ckpt_metrics = {"eval_loss": eval_metrics["loss"]} if eval_metrics else None
        checkpointing.save(manager, state, meta(), ckpt_metrics, force=stop)
      if stop:
        break
  manager.wait_until_finished()
  manager.close()
  writer.close()
  del train_iter
  if step < total_steps:
    raise Preempted(step, str(manager.directory))
  if last_eval is not None:
    logging.info("Final eval loss %.3f at step %d.", last_eval["loss"], step)
  return state
