"""Decoding one MIMIC-CXR-JPG radiograph into the stored square uint8 image."""

from __future__ import annotations

import os

import numpy as np
from etils import epath
from PIL import Image

# What a bad JPEG raises in PIL: OSError (truncated data, "cannot identify image file"),
# ValueError / SyntaxError (broken headers), EOFError, and the decompression-bomb check.
# FileNotFoundError is an OSError too: catch it first where "absent" and "unreadable" differ.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def load_image(path: os.PathLike | str, size: int) -> np.ndarray:
  """Reads a radiograph: grayscale, centre crop to square, antialiased resize.

  The JPEG decoder first scales down in the DCT domain (``Image.draft``) to no less than twice
  ``size`` on the short side, which averages 8x8 blocks and so is itself antialiased and saves
  most of the decoding time of a 3000 px radiograph; LANCZOS then resamples the centre square
  to ``size``.

  Args:
    path: a JPEG (any format PIL reads works).
    size: the side of the output.

  Returns:
    uint8 [size, size, 1].

  Raises:
    FileNotFoundError: no file at ``path``.
    One of IMAGE_ERRORS: the file is not a readable image (truncated, corrupt).
  """
  with epath.Path(path).open("rb") as f:
    image = Image.open(f)
    image.draft("L", (2 * size, 2 * size))
    image = image.convert("L")  # Decodes the whole file: a truncated JPEG raises OSError here.
  width, height = image.size
  side = min(width, height)
  left, top = (width - side) // 2, (height - side) // 2
  image = image.crop((left, top, left + side, top + side))
  image = image.resize((size, size), Image.Resampling.LANCZOS)
  return np.asarray(image, dtype=np.uint8)[:, :, None]
