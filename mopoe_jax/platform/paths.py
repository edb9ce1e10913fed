"""Paths that may be URIs: a workdir is a local folder or ``gs://bucket/run`` alike.

Every path the project writes or reads under a user's workdir, compilation cache or classifier
directory goes through here (``etils.epath``, which serves ``gs://`` through TensorFlow's file
system where TensorFlow is installed and through fsspec/gcsfs otherwise), never through
``os.path.abspath`` or ``os.makedirs``, which would turn ``gs://bucket/run`` into a local folder
named ``gs:``. Local paths are made absolute (and ``~`` expanded); URIs are left as they are.
Orbax (checkpoints), tfds (datasets), TensorBoard's writer (TensorFlow) and JAX's compilation
cache take the same strings and do their own I/O.
"""

from __future__ import annotations

import io
import os
import re
import threading

from etils import epath

_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_uri(path: str | os.PathLike) -> bool:
  """True for ``gs://...``, ``s3://...`` and the like."""
  return bool(_URI.match(os.fspath(path)))


def resolve(path: str | os.PathLike) -> str:
  """A URI as it is; a local path with ``~`` expanded, made absolute."""
  path = os.fspath(path)
  return path if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def join(path: str | os.PathLike, *parts: str) -> str:
  """``path/part/...`` for local paths and URIs alike (no resolving)."""
  return (
    os.fspath(epath.Path(path).joinpath(*parts))
    if is_uri(path)
    else os.path.join(os.fspath(path), *parts)
  )


def makedirs(path: str | os.PathLike) -> str:
  """Creates the folder (and its parents) if missing; returns its resolved path."""
  path = resolve(path)
  epath.Path(path).mkdir(parents=True, exist_ok=True)
  return path


def exists(path: str | os.PathLike) -> bool:
  return epath.Path(resolve(path)).exists()


def write_bytes(path: str | os.PathLike, data: bytes, *, atomic: bool = True) -> None:
  """Writes ``data`` to ``path``, creating its folder. Locally (``atomic``) through a temporary
  file renamed over the target, so a reader sees the old file or the whole new one; an object
  store's upload is all-or-nothing by itself."""
  path = resolve(path)
  target = epath.Path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  if is_uri(path) or not atomic:
    target.write_bytes(data)
    return
  tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
  try:
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str | os.PathLike, text: str, *, atomic: bool = True) -> None:
  write_bytes(path, text.encode("utf-8"), atomic=atomic)


def read_bytes(path: str | os.PathLike) -> bytes:
  return epath.Path(resolve(path)).read_bytes()


def read_text(path: str | os.PathLike) -> str:
  return read_bytes(path).decode("utf-8")


def save_figure(path: str | os.PathLike, save) -> None:
  """Writes what ``save(file_object)`` writes (PIL's ``image.save(f, format=...)``,
  matplotlib's ``figure.savefig(f, format=...)``) to ``path``, local or URI."""
  buffer = io.BytesIO()
  save(buffer)
  write_bytes(path, buffer.getvalue())
