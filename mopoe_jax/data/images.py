"""Decoding one radiograph into the stored square uint8 image: what the dataset builders store
and what `mopoe_jax.inference` feeds a trained model, the same function for both.

TensorFlow-free (PIL and numpy), so that a trained model can be used without it.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from etils import epath
import numpy as np
from PIL import Image

# What a bad image raises in PIL: OSError (truncated data, "cannot identify image file"),
# ValueError / SyntaxError (broken headers), EOFError, and the decompression-bomb check.
# FileNotFoundError is an OSError too: catch it first where "absent" and "unreadable" differ.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
# Larger images are refused before they are decoded (a 3000 x 3000 radiograph is 9 M pixels;
# PIL's own bomb check starts at 89 M).
MAX_PIXELS = 64_000_000
# Modes with more than 8 bits per pixel: scaled from their full range to 0-255.
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageTooLarge(ValueError):
  """An image with more pixels than MAX_PIXELS."""


def _grayscale(image: Image.Image) -> Image.Image:
  """8-bit grayscale of any mode: colour by ITU-R 601 luma (alpha ignored), 16-bit grayscale
  (and 32-bit integer, how PIL opens some 16-bit PNGs) from 0-65535 to 0-255."""
  if image.mode in _SIXTEEN_BIT:
    values = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8), "L")
  if image.mode == "F":
    raise ValueError("floating-point images are not supported; save it as an 8- or 16-bit PNG")
  return image.convert("L")


def load_image(path: os.PathLike | str, size: int) -> np.ndarray:
  """Reads a radiograph file (local or gs://): `decode_image` of its bytes.

  Raises:
    FileNotFoundError: no file at ``path``.
    ImageTooLarge, or one of IMAGE_ERRORS: as `decode_image`.
  """
  with epath.Path(path).open("rb") as f:
    return decode_image(f, size)


def decode_image(file: BinaryIO, size: int) -> np.ndarray:
  """Decodes a radiograph: 8-bit grayscale, centre crop to square, antialiased resize.

  The JPEG decoder first scales down in the DCT domain (``Image.draft``) to no less than twice
  ``size`` on the short side, which averages 8x8 blocks and so is itself antialiased and saves
  most of the decoding time of a 3000 px radiograph; LANCZOS then resamples the centre square
  to ``size``.

  Args:
    file: an open binary file (or a file-like object such as an archive member or
      ``io.BytesIO``) of a JPEG or PNG (any format PIL reads), any size, 8 or 16 bits, any
      colour mode.
    size: the side of the output.

  Returns:
    uint8 [size, size, 1].

  Raises:
    ImageTooLarge: more than MAX_PIXELS pixels (nothing decoded).
    One of IMAGE_ERRORS: the file is not a readable image (truncated, corrupt).
  """
  image = Image.open(file)
  width, height = image.size
  if width * height > MAX_PIXELS:
    raise ImageTooLarge(
      f"{width} x {height} pixels is more than the {MAX_PIXELS:,} this "
      "reader decodes (MAX_PIXELS); scale it down first"
    )
  image.draft("L", (2 * size, 2 * size))  # JPEG only: a no-op for other formats
  image = _grayscale(image)  # Decodes the whole file: a truncated one raises OSError here.
  width, height = image.size
  side = min(width, height)
  left, top = (width - side) // 2, (height - side) // 2
  image = image.crop((left, top, left + side, top + side))
  image = image.resize((size, size), Image.Resampling.LANCZOS)
  return np.asarray(image, dtype=np.uint8)[:, :, None]
