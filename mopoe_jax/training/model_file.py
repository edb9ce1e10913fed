"""``<workdir>/model.json``: everything needed to rebuild a run's model and its inputs.

Training writes it when it starts (process 0), evaluation when it is missing (a workdir trained
before this file existed gets it from one ``--mode=evaluate``). With it and the checkpoints, a
trained model is used without the prepared dataset and without TensorFlow
(`mopoe_jax.inference`): the config (JSON), the report vocabulary, the dataset it was trained
on, and the preprocessing the inputs need.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import jax
import ml_collections

from mopoe_jax.platform import paths

FILE_NAME = "model.json"
FORMAT = 1
PREPROCESSING = {
  "images": "8-bit grayscale (colour by ITU-R 601 luma, 16-bit scaled from 0-65535), centre "
  "crop to a square, LANCZOS resize to image_size x image_size "
  "(mopoe_jax.data.images.load_image), stored as uint8 and fed as value / 255",
  "reports": "the FINDINGS section (IMPRESSION where there is none; the whole text when the "
  "report has no section headers), lower-cased, mopoe_jax.data.text.tokenize, word ids "
  "of the vocabulary (<exc> = 0 for unknown words), at most text_length - 1 words, "
  "<eos>, <pad> to text_length",
}


def path(workdir: str) -> str:
  return paths.join(paths.resolve(workdir), FILE_NAME)


def _tuples(value: Any) -> Any:
  """JSON lists back to the tuples the configs use (a model's fields must be hashable)."""
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def write(
  workdir: str,
  config: ml_collections.ConfigDict,
  vocabulary: Sequence[str],
  dataset: str,
  *,
  missing_only: bool = False,
) -> str | None:
  """Writes ``<workdir>/model.json`` (process 0 only; atomically). Returns its path, or None
  where nothing was written (another process, or ``missing_only`` and the file exists)."""
  target = path(workdir)
  if jax.process_index() != 0 or (missing_only and paths.exists(target)):
    return None
  content = {
    "format": FORMAT,
    "dataset": dataset,
    "image_size": int(config.data.image_size),
    "text_length": int(config.data.text_length),
    "modalities": list(config.data.modalities),
    "vocabulary": list(vocabulary),
    "preprocessing": PREPROCESSING,
    "config": json.loads(config.to_json_best_effort()),
  }
  paths.write_text(target, json.dumps(content, indent=1))  # atomic where local
  return target


def read(workdir: str) -> tuple[ml_collections.ConfigDict, list[str], dict]:
  """(config, vocabulary words, the whole file's content) of ``<workdir>/model.json``."""
  target = path(workdir)
  if not paths.exists(target):
    raise FileNotFoundError(
      f"{target} does not exist: {workdir} is not a training run's directory, or it was "
      "trained before runs kept their model file. Run the evaluation once "
      "(python main.py --config=CONFIG --workdir=WORKDIR --mode=evaluate), which writes it."
    )
  try:
    content = json.loads(paths.read_text(target))
    if content.get("format") != FORMAT:
      raise ValueError(f"format {content.get('format')!r}, expected {FORMAT}")
    config = ml_collections.ConfigDict(_tuples(content["config"]))
    words = list(content["vocabulary"])
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(
      f"{target} cannot be read ({type(e).__name__}: {e}); rerun the "
      "evaluation (--mode=evaluate) to write it again."
    ) from e
  return config, words, content
