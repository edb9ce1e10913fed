"""The modality registry: the one place that says which modalities a study has.

Each `Modality` names its kind (an image view or a report) and what a trained model reads for it
in a study folder. The rest is derived from `REGISTRY`: the order of the ``available`` columns
(`MODALITIES`), the keys the model reads of a batch (`MODEL_KEYS`), the networks the model
builds (`mopoe_jax.vae.model`), the files `mopoe_jax.inference` looks for, and the batch layout
that `batch_layout` prints (the docs' table is checked against it in tests/test_modalities.py).

Adding a modality: a `Modality` here, its feature in the builders (`input_pipeline/features.py`
takes its layout from `REGISTRY`), and, for a new kind, its encoder and decoder in
`mopoe_jax.vae.networks` and its likelihood in `mopoe_jax.vae.objective`.
"""

from __future__ import annotations

import dataclasses

IMAGE, TEXT = "image", "text"
KINDS = (IMAGE, TEXT)


@dataclasses.dataclass(frozen=True)
class Modality:
  """One modality of a study.

  name: the batch key, the ``available`` column's name and the config's ``data.modalities``
    entry.
  kind: 'image' (uint8 [S, S, 1], Laplace likelihood) or 'text' (int32 word ids [T],
    categorical likelihood).
  meaning: what it holds, for the batch layout.
  file_stems, file_suffixes: the files a trained model reads for it in a study folder
    (`mopoe_jax.inference.read_study`), first stem first.
  """

  name: str
  kind: str
  meaning: str
  file_stems: tuple[str, ...]
  file_suffixes: tuple[str, ...]

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"Modality {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}.")

  @property
  def is_text(self) -> bool:
    return self.kind == TEXT


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
REGISTRY: tuple[Modality, ...] = (
  Modality(
    "frontal", IMAGE, "PA view (zeros where the study has none)", ("frontal",), _IMAGE_SUFFIXES
  ),
  Modality(
    "lateral", IMAGE, "lateral view (zeros where the study has none)", ("lateral",), _IMAGE_SUFFIXES
  ),
  # report.xml: an Open-i (Indiana University) XML report.
  Modality(
    "text",
    TEXT,
    "FINDINGS word ids (`<eos>`, then `<pad>`; all `<pad>` where missing)",
    ("report",),
    (".txt", ".xml"),
  ),
)
_BY_NAME = {m.name: m for m in REGISTRY}

# The columns of ``available``, in registry order.
MODALITIES: tuple[str, ...] = tuple(m.name for m in REGISTRY)
IMAGE_MODALITIES: tuple[str, ...] = tuple(m.name for m in REGISTRY if m.kind == IMAGE)
TEXT_MODALITIES: tuple[str, ...] = tuple(m.name for m in REGISTRY if m.kind == TEXT)
# What the model reads of a batch: every modality and ``available``.
MODEL_KEYS: tuple[str, ...] = MODALITIES + ("available",)


def get(name: str) -> Modality:
  try:
    return _BY_NAME[name]
  except KeyError:
    raise ValueError(
      f"Unknown modality {name!r}; the registry has {MODALITIES} (mopoe_jax/data/modalities.py)."
    ) from None


def is_text(name: str) -> bool:
  return get(name).is_text


def column(name: str) -> int:
  """The modality's column in ``available``."""
  return MODALITIES.index(get(name).name)


def batch_layout() -> list[tuple[str, str, str, str]]:
  """(key, dtype, shape, meaning) of every batch entry, modalities first (the docs' table)."""
  rows = [
    (
      m.name,
      "uint8" if m.kind == IMAGE else "int32",
      "[b, S, S, 1]" if m.kind == IMAGE else "[b, T]",
      m.meaning,
    )
    for m in REGISTRY
  ]
  return rows + [
    (
      "available",
      "bool",
      f"[b, {len(MODALITIES)}]",
      "which of (" + ", ".join(MODALITIES) + ") the study has",
    ),
    ("labels", "float32", "[b, 14]", "CheXpert labels: 1 / 0 / -1 / NaN (blank)"),
    ("finding", "int32", "[b]", "the builders' flag: any of the 13 pathologies is 1.0"),
    ("valid", "bool", "[b]", "eval batches only: False on padding rows"),
    ("attributes", "float32", "[b, A]", "classifier batches only, where the dataset has them"),
  ]


def batch_layout_markdown() -> str:
  """`batch_layout` as a Markdown table."""
  lines = ["| key | dtype | shape | what |", "| --- | --- | --- | --- |"]
  lines += [f"| `{k}` | {d} | {s} | {w} |" for k, d, s, w in batch_layout()]
  return "\n".join(lines)
