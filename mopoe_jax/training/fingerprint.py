"""What a checkpoint records about the run that wrote it, and the check before anything loads.

Each checkpoint's metadata holds ``fields``: every setting that fixes the parameter shapes
(`SHAPE_FIELDS`) or the order of the training batches (`DATA_ORDER_FIELDS`), by the name a user
knows it under (``model.latent_dim``, ``train.batch_size``; ``dataset`` is the tfds name with its
version, ``vocab_size`` the vocabulary's size, ``process_count`` the number of JAX processes,
each of which reads its own shard of the train split). `check` compares them with the current
run before any array is restored and names every field that differs, with both values:

- a shape field that differs is an error, in training and in evaluation;
- a data-order field that differs is an error when resuming training (the exact data position
  cannot be resumed) unless ``train.allow_data_order_change``; evaluation ignores them.
"""

from __future__ import annotations

import json
from typing import Any

from absl import logging
import ml_collections

# Settings that fix the parameter shapes (or what the parameters mean).
SHAPE_FIELDS = (
  "dataset",
  "vocab_size",
  "data.modalities",
  "data.image_size",
  "data.text_length",
  "model.latent_dim",
  "model.image_encoder_widths",
  "model.image_decoder_widths",
  "model.text_encoder_widths",
  "model.text_decoder_widths",
  "model.variant",
)
# Settings that fix which studies make up each training batch (input_pipeline.batching).
DATA_ORDER_FIELDS = (
  "train.batch_size",
  "train.seed",
  "process_count",
  "data.train_split",
  "data.require_complete",
  "data.shuffle_buffer_size",
)


class MismatchError(ValueError):
  """The checkpoint was written by a run whose recorded fields differ from this run's."""


def _json(value: Any) -> Any:
  """``value`` as it reads back from the checkpoint's JSON (tuples become lists)."""
  return json.loads(json.dumps(value, default=list))


def fields(
  config: ml_collections.ConfigDict, *, dataset: str, vocab_size: int, process_count: int
) -> dict[str, Any]:
  """The fields of `SHAPE_FIELDS` and `DATA_ORDER_FIELDS` for this run (JSON values).

  Args:
    config: the run's config.
    dataset: the data source's name with version, e.g. 'synthetic_cxr/tiny/1.0.0'.
    vocab_size: the size of the report vocabulary.
    process_count: the number of JAX processes (each reads its own shard).
  """
  special = {"dataset": dataset, "vocab_size": int(vocab_size), "process_count": int(process_count)}
  out = {}
  for name in SHAPE_FIELDS + DATA_ORDER_FIELDS:
    if name in special:
      out[name] = special[name]
    else:
      section, key = name.split(".")
      out[name] = _json(config[section][key])
  return out


def _lines(diffs: list[tuple[str, Any, Any]]) -> str:
  return "\n".join(
    f"  {name}: {saved!r} in the checkpoint, {now!r} now" for name, saved, now in diffs
  )


def check(
  meta: dict,
  config: ml_collections.ConfigDict,
  current: dict,
  *,
  step: int,
  directory: str,
  resuming: bool,
) -> None:
  """Raises `MismatchError` naming every recorded field that differs from ``current``.

  Args:
    meta: the checkpoint's metadata (`mopoe_jax.training.checkpointing.read_meta`).
    config: this run's config (reads ``train.allow_data_order_change``).
    current: this run's `fields`.
    step, directory: the checkpoint, for the message.
    resuming: True when training resumes from it (data-order fields count), False when it is
      evaluated (only the shape fields count).
  """
  where = f"the checkpoint of step {step} in {directory}"
  doing = "resume from" if resuming else "evaluate"
  saved = meta.get("fields")
  if not isinstance(saved, dict):
    raise MismatchError(
      f"Cannot {doing} {where}: its metadata records no settings (keys: {sorted(meta)}), "
      "so it cannot be checked against this config. It was not written by this project's "
      "training; use a --workdir that was."
    )
  missing = [n for n in SHAPE_FIELDS if n not in saved]
  if missing:
    raise MismatchError(
      f"Cannot {doing} {where}: its metadata lacks the fields {missing} "
      "(written by another version). Use a new --workdir."
    )
  diffs = [(n, saved[n], current[n]) for n in SHAPE_FIELDS if saved[n] != current[n]]
  if diffs:
    raise MismatchError(
      f"Cannot {doing} {where}: it was written with another model or dataset:\n"
      f"{_lines(diffs)}\nThese fix the parameter shapes. Use the config (and dataset) it was "
      "trained with, or a new --workdir."
    )
  if not resuming:
    return
  diffs = [
    (n, saved.get(n, "(not recorded)"), current[n])
    for n in DATA_ORDER_FIELDS
    if saved.get(n, "(not recorded)") != current[n]
  ]
  if not diffs:
    return
  if config.train.allow_data_order_change:
    logging.warning(
      "Resuming from %s with another data order (allowed by "
      "train.allow_data_order_change):\n%s\nThe batches from here on differ from "
      "those of an uninterrupted run.",
      where,
      _lines(diffs),
    )
    return
  raise MismatchError(
    f"Cannot resume the exact data position of {where}: the data order changed:\n"
    f"{_lines(diffs)}\nRerun with the checkpoint's values, or pass "
    "--config.train.allow_data_order_change=true to continue with the new ones from step "
    f"{step} (the batches will then differ from those of an uninterrupted run)."
  )
