"""The training loop's compiled programs, built behind one call (`Programs.build`).

- the init (`init_program`): one jitted object per program in this process
  (`compilation.jitted_once`), compiled with the fast-compile options;
- the train step (`train_program`): traced once and kept on disk beside the compilation cache
  (`compilation.StoredProgram`), so that a restart neither traces nor lowers it; `build` starts
  its compile in a background thread, which runs while the state is initialised or restored;
- the eval step (`eval_program`, `Programs.eval_step`): kept on disk as the train step is.

A program's key (what makes a stored step stale) comes from the model, the step's settings,
the state's structure and shapes, the devices, and the config (`trace_settings`) less the fields
that only steer the loop.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from mopoe_jax.platform import compilation, sharding, speed
from mopoe_jax.training.step import (
  StateSharding,
  StepConfig,
  eval_sums,
  gather_sharding,
  init_state,
  train_step,
)
from mopoe_jax.vae import model as model_lib

# Config fields that steer the loop around the programs (what runs when, where files go, the
# data order, the evaluation), never what `init_state` or `train_step` trace: left out of their
# program keys. Every other field is in them, a field added later included: a change to it
# retraces, rather than reusing a stale stored program.
_LOOP_ONLY_FIELDS = (
  "eval",
  "classifier",
  "data.name",
  "data.data_dir",
  "data.manual_dir",
  "data.finding_rule",
  "data.train_split",
  "data.eval_split",
  "data.test_split",
  "data.shuffle_buffer_size",
  "data.prefetch",
  "data.require_complete",
  "train.seed",
  "train.per_device_batch_size",
  "train.num_epochs",
  "train.num_steps",
  "train.log_every_steps",
  "train.eval_every_steps",
  "train.eval_batches",
  "train.checkpoint_every_steps",
  "train.keep_checkpoints",
  "train.plateau_factor",
  "train.plateau_patience",
  "train.plateau_min_scale",
  "train.multihost",
  "train.coordinator_address",
  "train.num_processes",
  "train.process_id",
  "train.allow_data_order_change",
  "train.image_grid_studies",
  "train.profile_steps",
  "train.compilation_cache",
  "train.compilation_cache_dir",
)


def trace_settings(config: ml_collections.ConfigDict) -> str:
  """The config as the programs' keys see it: every field but `_LOOP_ONLY_FIELDS`, as JSON."""
  settings = json.loads(config.to_json_best_effort())
  for name in _LOOP_ONLY_FIELDS:
    section, _, field = name.partition(".")
    if field:
      settings.get(section, {}).pop(field, None)
    else:
      settings.pop(section, None)
  return json.dumps(settings, sort_keys=True)


def init_program(config: ml_collections.ConfigDict, model, mesh):
  """The jitted `init_state` of ``model`` and ``config``, its output laid out over ``mesh`` as
  `StateSharding.from_config` says (replicated, or its large arrays split): one object per
  program in this process (`compilation.jitted_once`)."""
  layout = StateSharding.from_config(config, mesh)
  return compilation.jitted_once(
    (init_state, model, trace_settings(config), mesh),
    lambda: jax.jit(
      functools.partial(init_state, model, config, layout=layout),
      # Split: the layout's constraints inside place each array (an out_shardings tree would
      # have to carry this very trace's optimizer functions).
      out_shardings=None if layout.split else sharding.replicated(mesh),
    ),
  )


def _flat_train_step(state_leaves, batch, rng, *, treedef, model, step_config, gather=None):
  """`train_step` on the state's leaves (what `compilation.StoredProgram` can keep on disk)."""
  state, metrics = train_step(
    jax.tree.unflatten(treedef, state_leaves),
    batch,
    rng,
    model=model,
    step_config=step_config,
    gather=gather,
  )
  return jax.tree.leaves(state), metrics


def train_program(
  config: ml_collections.ConfigDict, model, step_config: StepConfig, mesh, abstract, batch_shape
) -> compilation.StoredProgram:
  """The train step over ``mesh`` (batch sharded, state donated and laid out as ``abstract``'s
  shardings say) as a `compilation.StoredProgram` of the state's leaves: traced once, kept beside
  the compilation cache (unless ``train.compilation_cache`` is off), loaded untraced by a restart;
  one object per program in this process. Call it through `_tree_step`."""
  replicated, sharded = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  treedef = jax.tree.structure(abstract)
  state_shardings = [x.sharding for x in jax.tree.leaves(abstract)]
  gather = gather_sharding(abstract)
  key = compilation.program_key(
    "train_step",
    model,
    step_config,
    trace_settings(config),
    compilation.layout_key(mesh, abstract, batch_shape),
  )
  return compilation.jitted_once(
    ("stored train step", key),
    lambda: compilation.StoredProgram(
      functools.partial(
        _flat_train_step, treedef=treedef, model=model, step_config=step_config, gather=gather
      ),
      name="train_step",
      key=key,
      directory=compilation.stored_programs_dir(config.train.compilation_cache),
      in_shardings=(state_shardings, sharded, replicated),
      out_shardings=(state_shardings, replicated),
      donate_argnums=(0,),
    ),
  )


def eval_program(
  settings: str, model, step_config: StepConfig, mesh, abstract, batch_shape, directory
) -> compilation.StoredProgram:
  """`eval_sums` over ``mesh`` as a `compilation.StoredProgram` (traced once, kept in
  ``directory``, loaded untraced by a restart): the parameters and BatchNorm statistics laid out
  as ``abstract``'s shardings say, the batch (``batch_shape``, with 'valid') sharded, the sums
  replicated. ``settings``: `trace_settings` of the config. One object per program in this
  process."""
  variables = (abstract.params, abstract.batch_stats)
  gather = gather_sharding(abstract)
  key = compilation.program_key(
    "eval_step", model, step_config, settings, compilation.layout_key(mesh, variables, batch_shape)
  )
  params_shardings, stats_shardings = jax.tree.map(lambda x: x.sharding, variables)
  return compilation.jitted_once(
    ("stored eval step", key),
    lambda: compilation.StoredProgram(
      functools.partial(eval_sums, model=model, step_config=step_config, gather=gather),
      name="eval_step",
      key=key,
      directory=directory,
      in_shardings=(params_shardings, stats_shardings, sharding.batch_sharded(mesh)),
      out_shardings=sharding.replicated(mesh),
    ),
  )


def _tree_step(flat_step, treedef):
  """``(state, batch, rng) -> (state, metrics)`` from the compiled `_flat_train_step`."""

  def step(state, batch, rng):
    leaves, metrics = flat_step(jax.tree.leaves(state), batch, rng)
    return jax.tree.unflatten(treedef, leaves), metrics

  return step


@dataclasses.dataclass
class Programs:
  """The loop's programs for one model, config and mesh; nothing is compiled by `build`."""

  init_jit: Any  # jitted init_state: rng -> the state as `abstract` lays it out
  abstract: Any  # the state's shapes and shardings
  batch_shape: dict  # a train batch's shapes and shardings
  stored_step: compilation.StoredProgram
  model: Any
  step_config: StepConfig
  mesh: Any
  settings: str = ""  # `trace_settings` of the config: part of the eval step's key
  stored_dir: str | None = None  # where the traced programs are kept (None: nowhere)
  _compile: compilation.BackgroundCompile | None = None

  @classmethod
  def build(
    cls,
    config: ml_collections.ConfigDict,
    model,
    step_config: StepConfig,
    mesh,
    init_rng,
    step_rng=None,
  ) -> "Programs":
    """The programs of ``model`` and ``config`` over ``mesh``; with ``step_rng``, the train step
    starts compiling in a background thread at once (`train_step` waits for it)."""
    init_jit = init_program(config, model, mesh)
    # The state's shapes from the same trace as the state itself: its tree carries the
    # optimizer's functions, which must be the very ones the compiled programs were given.
    abstract = StateSharding.from_config(config, mesh).abstract(jax.eval_shape(init_jit, init_rng))
    batch_shape = sharding.abstract(
      model_lib.dummy_batch(config, config.train.batch_size), sharding.batch_sharded(mesh)
    )
    stored = train_program(config, model, step_config, mesh, abstract, batch_shape)
    programs = cls(
      init_jit,
      abstract,
      batch_shape,
      stored,
      model,
      step_config,
      mesh,
      settings=trace_settings(config),
      stored_dir=compilation.stored_programs_dir(config.train.compilation_cache),
    )
    if step_rng is not None:
      programs.compile_step(step_rng)
    return programs

  def compile_step(self, step_rng) -> None:
    """Starts compiling the train step in the background (once; later calls do nothing)."""
    if self._compile is None:
      self._compile = compilation.BackgroundCompile(
        self.stored_step,
        jax.tree.leaves(self.abstract),
        self.batch_shape,
        step_rng,
        name="train step",
      )

  def init_state(self, init_rng):
    """A new train state (compiled with the fast-compile options)."""
    tic = time.perf_counter()
    state = compilation.compile_fast(self.init_jit, init_rng, runs_once=True)(init_rng)
    jax.block_until_ready(state)
    logging.info("Initialised the train state in %.1f s.", time.perf_counter() - tic)
    return state

  def train_step(self):
    """``(state, batch, rng) -> (state, metrics)``; waits for `compile_step`'s compile."""
    return _tree_step(self._compile.result(), jax.tree.structure(self.abstract))

  def train_step_flops(self) -> float | None:
    """FLOPs of one train step per device (XLA's cost analysis of the compiled step)."""
    return speed.program_flops(self._compile.result())

  def eval_step(self, state, batch_size: int):
    """The compiled eval step: ``(state, batch with 'valid') -> sums`` (`eval_program`)."""
    sharded = sharding.batch_sharded(self.mesh)
    shape = dict(
      self.batch_shape, valid=jax.ShapeDtypeStruct((batch_size,), np.bool_, sharding=sharded)
    )
    program = eval_program(
      self.settings, self.model, self.step_config, self.mesh, self.abstract, shape, self.stored_dir
    )
    compiled = compilation.compile_fast(program, state.params, state.batch_stats, shape)
    return lambda state, batch: compiled(state.params, state.batch_stats, batch)
