"""The dataset builders of this repository, found by their folders, not by a list.

A builder family is a sub-package ``input_pipeline/<name>/`` that holds
``<name>_dataset_builder.py`` (tfds's own convention) and imports its builder class in its
``__init__.py``, which registers it with tfds. Adding a builder is adding such a folder: nothing
else names it.
"""

from __future__ import annotations

import importlib
import pathlib

_HERE = pathlib.Path(__file__).resolve().parent


def families() -> dict[str, str]:
  """Builder family name -> the package that registers it, for every folder found here."""
  return {
    path.name: f"input_pipeline.{path.name}"
    for path in sorted(_HERE.iterdir())
    if (path / "__init__.py").is_file() and (path / f"{path.name}_dataset_builder.py").is_file()
  }


def family_of(name: str) -> str:
  """'mimic_cxr/paper:1.0.0' -> 'mimic_cxr'."""
  return name.split("/")[0].split(":")[0]


def register(name: str) -> str | None:
  """Imports the package of the builder of dataset ``name`` (registering it with tfds); returns
  the package, or None where this repository has no such builder (a tfds catalogue dataset, a
  builder defined by a test)."""
  module = families().get(family_of(name))
  if module is not None:
    importlib.import_module(module)
  return module
