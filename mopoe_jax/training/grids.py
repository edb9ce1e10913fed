"""The generation grids that training writes to TensorBoard at each evaluation.

Per image modality: the given views above a line, then the decoded posterior mean of every
subset (one row per subset, one column per study) of the first ``train.image_grid_studies``
studies of the eval split. The studies form a global batch like a training batch (each process
reads its share, `mopoe_jax.platform.sharding.to_global_batch`), so ``image_grid_studies`` must
divide over the devices; the compiled program returns the studies and the decoded means replicated,
so every process can read the whole grid (the writer writes on process 0).
"""

from __future__ import annotations

import functools

import jax

from mopoe_jax.data import visualize
from mopoe_jax.data.datasource import MODEL_KEYS, DataSource
from mopoe_jax.platform import compilation, sharding
from mopoe_jax.vae import model as model_lib


def subset_means_decoded(model, variables, inputs, available) -> dict:
  """Decodes the posterior mean of every subset: modality -> [K, B, ...] (eval mode)."""
  _, _, mu_k, _ = model.apply(variables, inputs, available, False, method=model.posteriors)
  k, b, d = mu_k.shape
  outputs = model.apply(variables, mu_k.reshape(k * b, d), False, method=model.decode)
  return {m: o.reshape(k, b, *o.shape[1:]) for m, o in outputs.items()}


def _generate(model, modalities: tuple, variables, batch):
  inputs, available = model_lib.inputs_from_batch(batch, modalities)
  return batch, subset_means_decoded(model, variables, inputs, available)


class TrainingGrids:
  """``grids(state) -> {'generation/<modality>': uint8 [1, H, W, 3]}`` for the metric writer."""

  def __init__(self, model, config, data: DataSource, state, mesh):
    self._modalities = tuple(config.data.modalities)
    n = config.train.image_grid_studies
    batch = next(data.eval_batches(config.data.eval_split, batch_size=n))
    self._batch = sharding.to_global_batch({k: batch[k] for k in MODEL_KEYS}, mesh)
    variables = self._variables(state)
    # Traced once and kept on disk as the train step is (a restart loads it untraced).
    args = (variables, self._batch)
    key = compilation.program_key(
      "image_grids", model, self._modalities, compilation.layout_key(mesh, *args)
    )
    program = compilation.jitted_once(
      ("stored image grids", key),
      lambda: compilation.StoredProgram(
        functools.partial(_generate, model, self._modalities),
        name="image_grids",
        key=key,
        directory=compilation.stored_programs_dir(config.train.compilation_cache),
        in_shardings=jax.tree.map(lambda x: x.sharding, args),
        out_shardings=sharding.replicated(mesh),
      ),
    )
    self._fn = compilation.compile_fast(program, *args)

  @staticmethod
  def _variables(state) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}

  def __call__(self, state) -> dict:
    batch, decoded = jax.device_get(self._fn(self._variables(state), self._batch))
    images = {}
    for m in self._modalities:
      if model_lib.is_text(m):
        continue
      rows = [batch[m]] + list(decoded[m])
      available = [batch["available"][:, model_lib.DATA_MODALITIES.index(m)]]
      images[f"generation/{m}"] = visualize.image_grid(
        rows, available=available + [None] * (len(rows) - 1), separator_after=1
      )[None]
    return images
