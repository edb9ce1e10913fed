"""The training step: a pure function of (state, global batch, rng), jitted by the caller.

``train_step(state, batch, rng) -> (state, metrics)`` runs the model on a global batch, the
objective (`mopoe_jax.vae.objective`), the gradient and the Adam update. Jitted over a ``('data',)``
mesh (`mopoe_jax.platform.sharding`) with the batch sharded, BatchNorm statistics and the loss are
computed over the global batch (XLA inserts the all-reduces). A non-finite loss or gradient leaves
the parameters alone and records the step in ``state.bad_step``. Nothing here reads data or
imports TensorFlow.

Where the state lies (`StateSharding`, ``train.shard_optimizer``): replicated, every device
running the whole Adam update; or with the large parameters and their Adam moments split over
the devices, each device updating its own slice. Split, the step gathers the parameters whole
before the forward pass, the gradients are summed over the devices as before and each device
takes its slice of them: the same arithmetic on the same numbers, so the same parameters bit for
bit, with less memory per device and less memory traffic.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from absl import logging
from flax.training import train_state as flax_train_state
import jax
import jax.numpy as jnp
import ml_collections
import optax

from mopoe_jax.platform import runtime, sharding
from mopoe_jax.vae import model as model_lib
from mopoe_jax.vae import objective, subsets


class TrainState(flax_train_state.TrainState):
  batch_stats: Any
  # Step at which a non-finite loss or gradient was first seen (-1: never). From then on the
  # step leaves the parameters alone, so the state stays the last good one.
  bad_step: jax.Array


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """The static, hashable part of the config that the jitted step closes over."""

  modalities: tuple
  subset_names: tuple
  rec_weights: tuple
  beta: float
  image_scale: float
  text_pad_id: int | None  # left out of the text likelihood; None: every position counts

  @classmethod
  def from_config(cls, config, model: model_lib.MoPoE, pad_id: int) -> "StepConfig":
    """``pad_id``: the vocabulary's <pad> id, masked out of the text loss when
    ``config.model.mask_text_padding``."""
    return cls(
      modalities=tuple(config.data.modalities),
      subset_names=tuple(subsets.subset_names(config.data.modalities, model.mask)),
      rec_weights=tuple(float(w) for w in config.model.rec_weights),
      beta=float(config.model.beta),
      image_scale=float(config.model.image_scale),
      text_pad_id=int(pad_id) if config.model.mask_text_padding else None,
    )


# ---------------------------------------------------------------------------------------------
# Config checks: everything that can be wrong is reported before anything compiles.


def for_devices(config: ml_collections.ConfigDict, num_devices: int) -> ml_collections.ConfigDict:
  """A copy of ``config`` whose sizes fit ``num_devices`` devices (all processes' together).

  ``train.per_device_batch_size``, when set, decides the global batch (per device x devices);
  ``train.image_grid_studies`` rounds up to a multiple of the devices (the grid's studies are
  split over them like a batch). Each change is logged. The global ``train.batch_size`` itself
  is never rounded: it is the optimisation's batch, so one that does not divide is an error
  (`validate_config`), with a suggestion.
  """
  config = config.copy_and_resolve_references()
  t = config.train
  if t.per_device_batch_size is not None:
    if t.per_device_batch_size < 1:
      raise ValueError(
        f"config.train.per_device_batch_size must be >= 1, got {t.per_device_batch_size}."
      )
    logging.info(
      "Global batch %d = %d per device x %d devices (train.per_device_batch_size; "
      "train.batch_size=%s is not used).",
      t.per_device_batch_size * num_devices,
      t.per_device_batch_size,
      num_devices,
      t.batch_size,
    )
    t.batch_size = t.per_device_batch_size * num_devices
  if t.image_grid_studies > 0 and t.image_grid_studies % num_devices:
    rounded = -(-t.image_grid_studies // num_devices) * num_devices
    logging.info(
      "train.image_grid_studies %d -> %d (a multiple of the %d devices).",
      t.image_grid_studies,
      rounded,
      num_devices,
    )
    t.image_grid_studies = rounded
  return config


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises ValueError naming the field and what to change when the config is inconsistent."""
  d, m, t = config.data, config.model, config.train
  unknown = [x for x in d.modalities if x not in model_lib.DATA_MODALITIES]
  if unknown or not d.modalities:
    raise ValueError(
      f"config.data.modalities={tuple(d.modalities)}: each must be one of "
      f"{model_lib.DATA_MODALITIES}."
    )
  if len(m.rec_weights) != len(d.modalities):
    raise ValueError(
      f"config.model.rec_weights has {len(m.rec_weights)} entries for "
      f"{len(d.modalities)} modalities {tuple(d.modalities)}; give one weight each."
    )
  sharding.check_batch_divisible(t.batch_size, num_devices)
  num_subsets = len(subsets.variant_mask(m.variant, len(d.modalities)))
  if m.assignment == "slice" and t.batch_size < num_subsets:
    raise ValueError(
      f"config.train.batch_size={t.batch_size} is smaller than the {num_subsets} subsets of "
      f"variant {m.variant!r}; the 'slice' assignment needs one row per subset. Use "
      f"--config.train.batch_size={num_subsets} or more, or --config.model.assignment=random."
    )
  if t.learning_rate <= 0 or t.warmup_steps < 0:
    raise ValueError(
      f"config.train.learning_rate must be > 0 and warmup_steps >= 0, got "
      f"{t.learning_rate} and {t.warmup_steps}."
    )
  if not 0.0 < t.plateau_factor <= 1.0:
    raise ValueError(
      f"config.train.plateau_factor must be in (0, 1] (1.0: no plateau schedule, "
      f"as the reference), got {t.plateau_factor}."
    )
  for name in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
    if t[name] <= 0:
      raise ValueError(f"config.train.{name} must be positive, got {t[name]}.")
  if t.image_grid_studies < 0:
    raise ValueError(
      f"config.train.image_grid_studies must be >= 0 (0: no image grids), got "
      f"{t.image_grid_studies}."
    )
  if t.image_grid_studies % num_devices:
    suggestion = -(-t.image_grid_studies // num_devices) * num_devices
    raise ValueError(
      f"config.train.image_grid_studies={t.image_grid_studies} does not divide over the "
      f"{num_devices} devices (the grid's studies are split over them like a batch); use a "
      f"multiple of {num_devices}, e.g. --config.train.image_grid_studies={suggestion}."
    )
  shard_optimizer_setting(t.shard_optimizer)
  if t.shard_optimizer_min_elements < 1:
    raise ValueError(
      f"config.train.shard_optimizer_min_elements must be >= 1, got "
      f"{t.shard_optimizer_min_elements}."
    )
  given = [
    f"train.{k}"
    for k in ("coordinator_address", "num_processes", "process_id")
    if t.get(k) is not None
  ]
  if given and runtime.multihost_setting(t.multihost) == "off":
    raise ValueError(
      f"config.{', '.join(given)} set but config.train.multihost is false; "
      "leave it 'auto' (or true) to run on several processes."
    )
  # Geometry and the remaining choices are checked by building the model (no compilation).
  model_lib.create_model(config, vocab_size=8)


# ---------------------------------------------------------------------------------------------
# Model, optimizer, state.


def learning_rate_schedule(learning_rate: float, warmup_steps: int) -> optax.Schedule:
  """Linear warm-up from learning_rate / warmup_steps to learning_rate, then constant."""
  if warmup_steps == 0:
    return optax.constant_schedule(learning_rate)
  return optax.linear_schedule(learning_rate / warmup_steps, learning_rate, warmup_steps)


def create_optimizer(config) -> optax.GradientTransformation:
  """Adam with a linear warm-up, then a plateau factor that the loop lowers.

  Both are injected hyperparameters: the optimizer state holds the learning rate of the last
  update (`applied_learning_rate`) and the plateau factor (`set_plateau_scale`). The paper's
  settings: docs/model.md#training.
  """
  t = config.train
  adam = optax.inject_hyperparams(optax.adam, static_args=("b1", "b2"))
  return optax.chain(
    adam(learning_rate=learning_rate_schedule(t.learning_rate, t.warmup_steps), b1=t.b1, b2=t.b2),
    optax.inject_hyperparams(optax.scale)(step_size=1.0),
  )


def plateau_scale(opt_state) -> jax.Array:
  return opt_state[1].hyperparams["step_size"]


def applied_learning_rate(opt_state) -> jax.Array:
  """The learning rate of the optimizer's last update, plateau factor included."""
  return opt_state[0].hyperparams["learning_rate"] * plateau_scale(opt_state)


def set_plateau_scale(state: TrainState, value: float) -> TrainState:
  opt_state = state.opt_state
  hyper = dict(opt_state[1].hyperparams)
  hyper["step_size"] = jnp.asarray(value, hyper["step_size"].dtype)
  # Keep the sharding of the old value so that the jitted step does not recompile.
  hyper["step_size"] = jax.device_put(
    hyper["step_size"], opt_state[1].hyperparams["step_size"].sharding
  )
  new_opt = (opt_state[0], opt_state[1]._replace(hyperparams=hyper)) + tuple(opt_state[2:])
  return state.replace(opt_state=new_opt)


def init_state(model, config, rng, layout: "StateSharding | None" = None) -> TrainState:
  """Initial parameters, batch statistics and optimizer state (call under jit); with a
  ``layout`` that splits the state, its arrays come out split as the layout says."""
  variables = model_lib.init_variables(model, config, rng)
  state = TrainState.create(
    apply_fn=model.apply,
    params=variables["params"],
    batch_stats=variables["batch_stats"],
    tx=create_optimizer(config),
    bad_step=jnp.asarray(-1, jnp.int32),
  )
  # A strongly typed step, as a restored one is: a resumed run then compiles the same program.
  state = state.replace(step=jnp.zeros((), jnp.int32))
  if layout is not None and layout.split:
    state = jax.lax.with_sharding_constraint(state, layout.shardings(state))
  return state


# ---------------------------------------------------------------------------------------------
# Where the state lies over the devices.


def shard_optimizer_setting(value) -> str:
  """``train.shard_optimizer`` as 'auto', 'on' or 'off' (True/False and their spellings
  accepted)."""
  return runtime.auto_on_off(value, "train.shard_optimizer")


@dataclasses.dataclass(frozen=True)
class StateSharding:
  """Where each array of the train state lies on ``mesh``.

  ``min_elements`` None: everything replicated. Otherwise the parameters and the optimizer
  state's arrays of at least ``min_elements`` elements are split over the 'data' axis
  (`sharding.split_sharding`; the Adam moments have their parameter's shape, so each device
  holds the same slice of both); the step counters, the injected hyperparameters, the BatchNorm
  statistics and the small arrays stay replicated.
  """

  mesh: jax.sharding.Mesh
  min_elements: int | None = None

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, mesh) -> "StateSharding":
    """``train.shard_optimizer``: 'auto' splits on accelerators (the mesh's devices are GPUs or
    TPUs) and not on CPUs, true always, false never; one device never splits."""
    t = config.train
    setting = shard_optimizer_setting(t.shard_optimizer)
    platform = mesh.devices.flat[0].platform
    split = mesh.size > 1 and (setting == "on" or (setting == "auto" and platform != "cpu"))
    return cls(mesh, int(t.shard_optimizer_min_elements) if split else None)

  @property
  def split(self) -> bool:
    return self.min_elements is not None

  def shardings(self, state: TrainState):
    """A tree of ``state``'s structure holding each leaf's ``NamedSharding``."""
    replicated = sharding.replicated(self.mesh)
    out = jax.tree.map(lambda _: replicated, state)
    if not self.split:
      return out

    def leaf(x):
      return sharding.split_sharding(x.shape, self.mesh, self.min_elements)

    return out.replace(
      params=jax.tree.map(leaf, state.params), opt_state=jax.tree.map(leaf, state.opt_state)
    )

  def abstract(self, shapes: TrainState):
    """``shapes`` (e.g. `jax.eval_shape` of the init) with each leaf's sharding."""
    return sharding.abstract(shapes, self.shardings(shapes))


def gather_sharding(abstract_state):
  """What the step gathers the parameters to before the forward pass: the replicated sharding
  of the state's mesh when some parameter of ``abstract_state`` is split, else None (the
  parameters are whole already)."""
  params = jax.tree.leaves(abstract_state.params)
  if all(x.sharding.is_fully_replicated for x in params):
    return None
  return sharding.replicated(params[0].sharding.mesh)


# ---------------------------------------------------------------------------------------------
# The step.


def _terms(model, step_config: StepConfig, variables, batch, rng, train: bool):
  inputs, available = model_lib.inputs_from_batch(batch, step_config.modalities)
  sample_rng, dropout_rng = jax.random.split(rng)
  result = model.apply(
    variables,
    inputs,
    available,
    train,
    rngs={"sample": sample_rng, "dropout": dropout_rng},
    mutable=["batch_stats"] if train else False,
  )
  out, updates = result if train else (result, {})
  terms = objective.loss_terms(
    out,
    inputs,
    available,
    modalities=step_config.modalities,
    rec_weights=step_config.rec_weights,
    beta=step_config.beta,
    image_scale=step_config.image_scale,
    text_pad_id=step_config.text_pad_id,
  )
  return terms, available, updates


def _whole(tree, gather):
  """``tree`` (the parameters, or their gradients) whole on every device (``gather``: a
  replicated sharding), or as it is (None).

  Behind an optimization barrier: XLA then cannot move the gather into the networks nor the
  slicing of the gradients into their computation. Without it, on the paper's model on TPU v5e,
  XLA gathered each parameter again for the backward pass and computed several weight gradients
  straight into their slices (loops of collective-permutes): 1.68 GiB per chip instead of 0.98
  (docs/performance.md#the-optimizer-state-split-over-the-devices). An identity: the numbers do
  not change.
  """
  if gather is None:
    return tree
  return jax.lax.optimization_barrier(jax.lax.with_sharding_constraint(tree, gather))


def train_step(state: TrainState, batch: dict, rng, *, model, step_config: StepConfig, gather=None):
  """One optimizer step on a global batch; returns (new state, metrics).

  ``gather`` (`gather_sharding`): with a split state, the replicated sharding that the
  parameters are gathered to before the forward pass. The gradients are summed over the devices
  whole, as with a replicated state, and then the update of each split array runs on each
  device's slice of them.
  """
  rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    terms, available, updates = _terms(model, step_config, variables, batch, rng, True)
    loss, metrics = objective.reduce_terms(terms, step_config.subset_names, available)
    return loss, (metrics, updates["batch_stats"])

  (loss, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    _whole(state.params, gather)
  )
  grads = _whole(grads, gather)
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (state.bad_step < 0)
  # A non-finite step changes nothing but the step counter and records where it happened.
  # lax.cond runs one branch: the update stays in place in the donated buffers, where a
  # tree-wide jnp.where(finite, new, old) kept both versions alive (copies of the Adam moments).
  new_state = jax.lax.cond(
    finite,
    lambda s: s.apply_gradients(grads=grads, batch_stats=batch_stats),
    lambda s: s.replace(step=s.step + 1),
    state,
  )
  bad_step = jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step)
  new_state = new_state.replace(bad_step=bad_step.astype(jnp.int32))
  metrics = dict(
    metrics,
    grad_norm=grad_norm,
    learning_rate=applied_learning_rate(new_state.opt_state),
    finite=finite.astype(jnp.float32),
  )
  return new_state, metrics


def eval_step(state: TrainState, batch: dict, *, model, step_config: StepConfig, gather=None):
  """`objective.sums` of the batch's real rows (eval mode, fixed rng); add over batches.
  ``gather``: as in `train_step`."""
  return eval_sums(
    state.params, state.batch_stats, batch, model=model, step_config=step_config, gather=gather
  )


def eval_sums(params, batch_stats, batch: dict, *, model, step_config: StepConfig, gather=None):
  """`eval_step` of the parameters and BatchNorm statistics alone (dicts of arrays, what
  `mopoe_jax.platform.compilation.StoredProgram` keeps on disk)."""
  variables = {"params": _whole(params, gather), "batch_stats": batch_stats}
  terms, available, _ = _terms(model, step_config, variables, batch, jax.random.PRNGKey(0), False)
  return objective.sums(terms, step_config.subset_names, available, row_weight=batch["valid"])
