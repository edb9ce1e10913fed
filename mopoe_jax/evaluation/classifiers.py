"""Coherence classifiers: a small CNN per image view and a 1-D CNN on the report.

Their use: docs/model.md#evaluation (coherence).

Each classifier predicts the 15 ``PROBE_LABELS`` ("Finding" and the 14 CheXpert labels) as
independent sigmoids (multi-label). The targets follow `label_targets`: positive = 1.0 only;
"Finding" by ``config.data.finding_rule``.
On a dataset with ground-truth rendering attributes (``synthetic_cxr``), the image classifiers
get a second head that regresses the standardised attributes, so that generated images can be
scored against the attributes of the study they were generated from.

The classifiers are trained once on the train split (`config.classifier`), saved with their own
Orbax checkpoint in ``classifier_dir`` and restored from there by later evaluations (the
directory may be shared by runs on the same dataset: see ``classifier.checkpoint_dir``). A
checkpoint made for other settings (widths, steps, dataset, image size, vocabulary) is an error,
never silently reused.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Mapping, Sequence

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from mopoe_jax.data.datasource import DataSource
from mopoe_jax.data.labels import PROBE_LABELS, label_targets
from mopoe_jax.data.modalities import MODALITIES
from mopoe_jax.platform import paths
from mopoe_jax.training import checkpointing
from mopoe_jax.vae.model import is_text

_STATS_EXAMPLES = 4096  # train examples whose attributes give the standardisation statistics
_STD_FLOOR = 1e-6


class ImageClassifier(nn.Module):
  """Stride-2 3x3 convolutions with ReLU, global average pooling, linear heads."""

  widths: Sequence[int]
  num_labels: int = len(PROBE_LABELS)
  num_attributes: int = 0

  @nn.compact
  def __call__(self, images):
    """images: float [B, S, S, 1] in [0, 1] -> (logits [B, L], attributes [B, A])."""
    x = images * 2.0 - 1.0
    for width in self.widths:
      x = nn.relu(nn.Conv(width, (3, 3), strides=(2, 2))(x))
    x = x.mean(axis=(1, 2))  # [B, C]
    if not self.num_attributes:  # a dataset without attributes (MIMIC-CXR, IU): no head
      return nn.Dense(self.num_labels)(x), jnp.zeros((x.shape[0], 0), x.dtype)
    return nn.Dense(self.num_labels)(x), nn.Dense(self.num_attributes)(x)


class TextClassifier(nn.Module):
  """Word embedding, stride-2 1-D convolutions with ReLU, global max pooling, linear head."""

  vocab_size: int
  embed: int
  widths: Sequence[int]
  num_labels: int = len(PROBE_LABELS)

  @nn.compact
  def __call__(self, tokens):
    """tokens: int [B, T] -> (logits [B, L], attributes [B, 0])."""
    x = nn.Embed(self.vocab_size, self.embed)(tokens)
    for width in self.widths:
      x = nn.relu(nn.Conv(width, (4,), strides=(2,))(x))
    x = x.max(axis=1)  # [B, C]
    return nn.Dense(self.num_labels)(x), jnp.zeros((tokens.shape[0], 0), x.dtype)


@dataclasses.dataclass(frozen=True)
class Classifiers:
  """The trained classifiers of every modality and what their outputs mean."""

  modules: Mapping[str, nn.Module]  # modality -> module
  params: Mapping[str, Any]  # modality -> params
  attribute_names: tuple[str, ...]  # regressed by the image classifiers (empty: none)
  attribute_mean: np.ndarray  # [A] standardisation of the attribute head
  attribute_std: np.ndarray  # [A]

  def predict(self, modality: str, x) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities [B, 15] and attributes [B, A] (in the data's units) of inputs ``x``.

    ``x``: images uint8 or float in [0, 1] [B, S, S, 1], or int tokens [B, T]. Compiled once per
    module and input shape.
    """
    probs, attributes = _predict(self.modules[modality], self.params[modality], _prepare(x))
    attributes = (
      np.asarray(attributes) * self.attribute_std[: attributes.shape[-1]]
      + (self.attribute_mean[: attributes.shape[-1]])
    )
    return np.asarray(probs), attributes


def _prepare(x):
  x = jnp.asarray(x)
  if x.dtype == jnp.uint8:
    return x.astype(jnp.float32) / 255.0
  return x


@functools.partial(jax.jit, static_argnums=0)
def _predict(module: nn.Module, params, x):
  logits, attributes = module.apply({"params": params}, x)
  return jax.nn.sigmoid(logits), attributes


@functools.partial(jax.jit, static_argnames=("module", "learning_rate", "attribute_weight"))
def _train_step(
  params,
  opt_state,
  x,
  targets,
  weight,
  attributes,
  *,
  module: nn.Module,
  learning_rate: float,
  attribute_weight: float,
):
  """One Adam step on the weighted multi-label BCE (+ attribute MSE). weight: [B] 0/1."""
  tx = optax.adam(learning_rate)

  def loss_fn(p):
    logits, predicted = module.apply({"params": p}, x)
    count = jnp.maximum(weight.sum(), 1.0)
    bce = optax.sigmoid_binary_cross_entropy(logits, targets).mean(axis=-1)  # [B]
    loss = jnp.sum(weight * bce) / count
    metrics = {"bce": loss}
    if predicted.shape[-1]:
      mse = jnp.square(predicted - attributes).mean(axis=-1)  # [B]
      metrics["attribute_mse"] = jnp.sum(weight * mse) / count
      loss = loss + attribute_weight * metrics["attribute_mse"]
    return loss, metrics

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, {"loss": loss, **metrics}


# ------------------------------------------------------------------------------------------------
# Building, training, checkpointing.


def build_modules(
  clf_config: ml_collections.ConfigDict,
  modalities: Sequence[str],
  vocab_size: int,
  num_attributes: int,
) -> dict[str, nn.Module]:
  """modality -> classifier module (images share one architecture, hence one compilation)."""
  modules = {}
  for m in modalities:
    if is_text(m):
      modules[m] = TextClassifier(
        vocab_size=vocab_size, embed=clf_config.text_embed, widths=tuple(clf_config.text_widths)
      )
    else:
      modules[m] = ImageClassifier(
        widths=tuple(clf_config.image_widths), num_attributes=num_attributes
      )
  return modules


def _settings(
  config: ml_collections.ConfigDict,
  data: DataSource,
  modalities: Sequence[str],
  vocab_size: int,
  attribute_names: Sequence[str],
) -> dict:
  """What a saved checkpoint must match to be reused (JSON-serialisable)."""
  c = config.classifier
  return {
    "dataset": data.name,
    "train_split": config.data.train_split,
    "modalities": list(modalities),
    "labels": list(PROBE_LABELS),
    "finding_rule": str(config.data.finding_rule),
    "image_size": int(config.data.image_size),
    "text_length": int(config.data.text_length),
    "vocab_size": int(vocab_size),
    "image_widths": [int(w) for w in c.image_widths],
    "text_embed": int(c.text_embed),
    "text_widths": [int(w) for w in c.text_widths],
    "num_steps": int(c.num_steps),
    "batch_size": int(c.batch_size),
    "learning_rate": float(c.learning_rate),
    "attribute_weight": float(c.attribute_weight),
    "seed": int(c.seed),
    "attribute_names": list(attribute_names),
  }


def classifier_dir_from_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  """``config.classifier.checkpoint_dir`` if set, else ``<workdir>/classifiers``."""
  return paths.resolve(
    config.classifier.get("checkpoint_dir") or paths.join(workdir, "classifiers")
  )


def get_classifiers(
  config: ml_collections.ConfigDict,
  data: DataSource,
  *,
  modalities: Sequence[str],
  vocab_size: int,
  classifier_dir: str,
  use_attributes: bool = True,
) -> Classifiers:
  """Restores the classifiers from ``classifier_dir``, or trains and saves them there.

  Args:
    config: the run's config; reads ``classifier`` (widths, steps, batch, learning rate, seed,
      attribute_weight, shuffle_buffer_size) and ``data`` (train split, sizes).
    data: the dataset (its train split trains the classifiers).
    modalities: one classifier per modality.
    vocab_size: the report vocabulary size.
    classifier_dir: the Orbax checkpoint directory (absolute or relative path).
    use_attributes: add the attribute head when the dataset stores attributes.
  """
  attribute_names = data.attribute_names if use_attributes else ()
  settings = _settings(config, data, modalities, vocab_size, attribute_names)
  modules = build_modules(config.classifier, modalities, vocab_size, len(attribute_names))
  classifier_dir = paths.resolve(classifier_dir)
  # Evaluation runs on process 0 alone: so does this manager.
  manager = ocp.CheckpointManager(
    classifier_dir,
    item_names=("params", "meta"),
    options=ocp.CheckpointManagerOptions(
      multiprocessing_options=checkpointing.this_process_options()
    ),
  )
  try:
    step = manager.latest_step()
    if step is not None:
      return _restore(manager, step, modules, settings, config, classifier_dir)
    classifiers, meta = train_classifiers(config, data, modules, attribute_names)
    manager.save(
      settings["num_steps"],
      args=ocp.args.Composite(
        params=ocp.args.StandardSave(dict(classifiers.params)),
        meta=ocp.args.JsonSave({**settings, **meta}),
      ),
    )
    manager.wait_until_finished()
    logging.info("Saved the coherence classifiers to %s.", classifier_dir)
    return classifiers
  finally:
    manager.close()


def _example_inputs(config: ml_collections.ConfigDict, modality: str, batch_size: int):
  if is_text(modality):
    return jnp.zeros((batch_size, config.data.text_length), jnp.int32)
  size = config.data.image_size
  return jnp.zeros((batch_size, size, size, 1), jnp.float32)


def _init_params(config, modules: Mapping[str, nn.Module], rng) -> dict:
  """modality -> freshly initialised params (one compiled program, not op-by-op)."""

  def init(rng):
    return {
      m: module.init(jax.random.fold_in(rng, i), _example_inputs(config, m, 1))["params"]
      for i, (m, module) in enumerate(modules.items())
    }

  return jax.jit(init)(rng)


def _restore(
  manager: ocp.CheckpointManager, step: int, modules, settings: dict, config, classifier_dir: str
) -> Classifiers:
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  # Checkpoints from before data.finding_rule were trained on the builders' ``finding`` column,
  # which is the 'any_positive' rule.
  meta.setdefault("finding_rule", "any_positive")
  different = {k: (meta.get(k), v) for k, v in settings.items() if meta.get(k) != v}
  if different:
    raise ValueError(
      f"The classifier checkpoint in {classifier_dir} was made for other settings "
      f"(saved vs now: {different}). Delete that directory to retrain, or set "
      "config.classifier.checkpoint_dir to a fresh directory."
    )
  abstract = jax.eval_shape(lambda: _init_params(config, modules, jax.random.key(0)))
  params = manager.restore(
    step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract))
  )["params"]
  logging.info("Restored the coherence classifiers from %s (step %d).", classifier_dir, step)
  return Classifiers(
    modules=modules,
    params=params,
    attribute_names=tuple(meta["attribute_names"]),
    attribute_mean=np.asarray(meta["attribute_mean"], np.float32),
    attribute_std=np.asarray(meta["attribute_std"], np.float32),
  )


def train_classifiers(
  config: ml_collections.ConfigDict,
  data: DataSource,
  modules: Mapping[str, nn.Module],
  attribute_names: Sequence[str] = (),
) -> tuple[Classifiers, dict]:
  """Trains every classifier on the same stream of train batches; returns (classifiers, meta).

  Each modality's loss covers only the studies that have it. ``meta`` holds the attribute
  standardisation and the final training losses (saved with the checkpoint).
  """
  c = config.classifier
  split = config.data.train_split
  if c.num_steps < 1 or c.batch_size < 1:
    raise ValueError(
      f"classifier.num_steps and classifier.batch_size must be positive, got "
      f"{c.num_steps} and {c.batch_size}."
    )
  if attribute_names:
    stats, _ = data.attributes(split, max_examples=_STATS_EXAMPLES)
    mean, std = stats.mean(axis=0), np.maximum(stats.std(axis=0), _STD_FLOOR)
  else:
    mean = std = np.zeros((0,), np.float32)
  rng = jax.random.key(c.seed)
  params = _init_params(config, modules, rng)
  opt_states = {m: optax.adam(c.learning_rate).init(p) for m, p in params.items()}
  columns = {m: MODALITIES.index(m) for m in modules}
  stream = data.classifier_batches(
    batch_size=c.batch_size, seed=c.seed, shuffle_buffer_size=c.shuffle_buffer_size
  )
  log_every = max(1, c.num_steps // 10)
  logging.info(
    "Training coherence classifiers for %s on %s (%d steps of %d).",
    list(modules),
    split,
    c.num_steps,
    c.batch_size,
  )
  start, metrics = time.perf_counter(), {}
  for step in range(1, c.num_steps + 1):
    batch = next(stream)
    targets = label_targets(batch["labels"], config.data.finding_rule).astype(np.float32)
    attributes = (
      (batch["attributes"] - mean) / std
      if attribute_names
      else np.zeros((c.batch_size, 0), np.float32)
    )
    for m, module in modules.items():
      weight = batch["available"][:, columns[m]].astype(np.float32)
      params[m], opt_states[m], metrics[m] = _train_step(
        params[m],
        opt_states[m],
        _prepare(batch[m]),
        targets,
        weight,
        attributes if not is_text(m) else np.zeros((c.batch_size, 0), np.float32),
        module=module,
        learning_rate=float(c.learning_rate),
        attribute_weight=float(c.attribute_weight),
      )
    if step % log_every == 0 or step == c.num_steps:
      elapsed = time.perf_counter() - start
      logging.info(
        "Classifiers step %d/%d: %s; %.1f steps/s, ETA %.0f s.",
        step,
        c.num_steps,
        ", ".join(f"{m} loss {float(v['loss']):.4f}" for m, v in metrics.items()),
        step / elapsed,
        (c.num_steps - step) * elapsed / step,
      )
  final = {m: {k: float(v) for k, v in mv.items()} for m, mv in metrics.items()}
  for m, mv in final.items():
    if not all(np.isfinite(v) for v in mv.values()):
      raise FloatingPointError(
        f"The {m} classifier's training loss is not finite ({mv}); lower "
        f"config.classifier.learning_rate (now {c.learning_rate})."
      )
  classifiers = Classifiers(
    modules=dict(modules),
    params=params,
    attribute_names=tuple(attribute_names),
    attribute_mean=np.asarray(mean, np.float32),
    attribute_std=np.asarray(std, np.float32),
  )
  meta = {
    "attribute_mean": [float(v) for v in mean],
    "attribute_std": [float(v) for v in std],
    "final_train_metrics": final,
  }
  return classifiers, meta
