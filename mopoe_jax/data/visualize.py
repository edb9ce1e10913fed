"""Image grids of studies, for PNG files and TensorBoard (`writer.write_images`).

Every grid is a uint8 RGB array [H, W, 3]: one column per study, one row per image view, a
``padding``-pixel gray gap between cells. Comparison grids (inputs above, outputs below, as in
the paper's Figure 1) draw a red line between the two parts. A cell whose study lacks that view
is gray with a dark diagonal. Grayscale images are repeated over the three colour channels.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from mopoe_jax.platform import paths

PAD_RGB = (96, 96, 96)
SEPARATOR_RGB = (230, 40, 40)
MISSING_RGB = (40, 40, 40)


def to_uint8(images) -> np.ndarray:
  """[N, S, S, C] uint8, or float in [0, 1] (clipped: decoder outputs are Laplace locations)."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  return np.round(np.clip(images.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def _cell(image: np.ndarray, available: bool) -> np.ndarray:
  """One uint8 image [S, S, C] -> [S, S, 3]; a missing view becomes gray with a diagonal."""
  size = image.shape[0]
  if not available:
    cell = np.empty((size, size, 3), np.uint8)
    cell[:] = PAD_RGB
    diagonal = np.arange(size)
    cell[diagonal, diagonal] = MISSING_RGB
    return cell
  if image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  return image[..., :3]


def image_grid(
  rows: Sequence[np.ndarray],
  *,
  available: Sequence[np.ndarray | None] | None = None,
  separator_after: int | None = None,
  padding: int = 2,
) -> np.ndarray:
  """Stacks rows of images into one grid.

  Args:
    rows: R arrays [N, S, S, C] (uint8, or float in [0, 1]); all with the same N and S.
    available: per row, bool [N] (False draws the cell as missing) or None (all present).
    separator_after: draw the red separating line after this many rows (0: above the first).
    padding: pixels between cells and around the grid; the separator is this thick too.

  Returns:
    uint8 [H, W, 3] with H = R * (S + padding) + padding (+ padding for a separator) and
    W = N * (S + padding) + padding.
  """
  if not rows:
    raise ValueError("image_grid needs at least one row of images.")
  rows = [to_uint8(r) for r in rows]
  shapes = {r.shape[:3] for r in rows}
  if len(shapes) != 1 or rows[0].ndim != 4:
    raise ValueError(
      f"All rows must be [N, S, S, C] with the same N and S; got {[r.shape for r in rows]}."
    )
  num_columns, size = rows[0].shape[0], rows[0].shape[1]
  available = [None] * len(rows) if available is None else list(available)
  if len(available) != len(rows):
    raise ValueError(f"available has {len(available)} entries for {len(rows)} rows.")
  step = size + padding
  extra = padding if separator_after is not None else 0
  grid = np.empty((len(rows) * step + padding + extra, num_columns * step + padding, 3), np.uint8)
  grid[:] = PAD_RGB
  for r, (images, present) in enumerate(zip(rows, available)):
    top = (
      padding + r * step + (extra if separator_after is not None and r >= separator_after else 0)
    )
    for c in range(num_columns):
      ok = True if present is None else bool(present[c])
      left = padding + c * step
      grid[top : top + size, left : left + size] = _cell(images[c], ok)
  if separator_after is not None:
    line = separator_after * step + padding // 2
    grid[line : line + padding] = SEPARATOR_RGB
  return grid


def _image_rows(
  images: Mapping[str, np.ndarray], available: Mapping[str, np.ndarray] | None = None
):
  """The 4-D (image) entries of ``images`` in order, with their availability (or None)."""
  names = [m for m, x in images.items() if np.ndim(x) == 4]
  return (
    [images[m] for m in names],
    [None if available is None else available.get(m) for m in names],
  )


def comparison_grid(
  above: Mapping[str, np.ndarray],
  below: Mapping[str, np.ndarray],
  *,
  above_available: Mapping[str, np.ndarray] | None = None,
  padding: int = 2,
) -> np.ndarray:
  """Image views of ``above`` (e.g. the given inputs), a red line, then those of ``below``.

  Entries that are not images ([B, T] text) are skipped; ``above`` may hold no image at all
  (e.g. text -> images), then the line tops the grid. ``above_available``: modality -> bool [N].
  Returns uint8 [H, W, 3].
  """
  top, top_available = _image_rows(above, above_available)
  bottom, _ = _image_rows(below)
  if not bottom:
    raise ValueError(f"No image views below the line (keys: {sorted(below)}).")
  return image_grid(
    top + bottom,
    available=top_available + [None] * len(bottom),
    separator_after=len(top),
    padding=padding,
  )


def samples_grid(samples: Mapping[str, np.ndarray], padding: int = 2) -> np.ndarray:
  """Generated views (modality -> [N, S, S, 1]), one row per view, no line. uint8 [H, W, 3]."""
  rows, _ = _image_rows(samples)
  return image_grid(rows, padding=padding)


def save_png(path: str, image: np.ndarray) -> None:
  """Writes a uint8 [H, W, 3] (or [H, W, 1]) array as a PNG file, creating its directory."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f"save_png expects uint8 [H, W, 1 or 3], got {image.dtype} {image.shape}.")
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  paths.save_figure(path, lambda f: pil.save(f, format="PNG"))
