"""Subset algebra: the K x M mask of the non-empty modality subsets used by the mixture.

Canonical order (docs/model.md#subsets-products-of-experts-and-the-mixture): by size, then in
combination order of the modality list. For (frontal, lateral, text) that is F, L, T, FL, FT, LT,
FLT. Every fusion computation works on this mask at once; nothing loops over subsets in Python.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

VARIANTS = ("mopoe", "poe", "moe")


def subset_mask(num_modalities: int) -> np.ndarray:
  """All 2^M - 1 non-empty subsets of M modalities as a bool [K, M] mask, canonical order."""
  if not isinstance(num_modalities, (int, np.integer)) or num_modalities < 1:
    raise ValueError(f"num_modalities must be a positive integer, got {num_modalities!r}.")
  rows = []
  for size in range(1, num_modalities + 1):
    for combo in itertools.combinations(range(num_modalities), size):
      row = np.zeros(num_modalities, dtype=bool)
      row[list(combo)] = True
      rows.append(row)
  return np.stack(rows)


def variant_mask(variant: str, num_modalities: int) -> np.ndarray:
  """The subsets a model variant mixes over, bool [K, M].

  ``mopoe``: all non-empty subsets; ``poe``: the full set only (MVAE without sub-sampling);
  ``moe``: the singletons only (MMVAE-style).
  """
  full = subset_mask(num_modalities)
  sizes = full.sum(axis=1)
  if variant == "mopoe":
    return full
  if variant == "poe":
    return full[sizes == num_modalities]
  if variant == "moe":
    return full[sizes == 1]
  raise ValueError(f"Unknown model variant {variant!r}; choose one of {VARIANTS}.")


def subset_names(modalities: Sequence[str], mask: np.ndarray | None = None) -> list[str]:
  """Readable names of the rows of ``mask``: modality names joined by '+' (canonical order)."""
  mask = subset_mask(len(modalities)) if mask is None else np.asarray(mask, dtype=bool)
  if mask.ndim != 2 or mask.shape[1] != len(modalities):
    raise ValueError(
      f"mask must have shape [K, {len(modalities)}] for modalities {tuple(modalities)}, "
      f"got {mask.shape}."
    )
  return ["+".join(m for m, used in zip(modalities, row) if used) for row in mask]
