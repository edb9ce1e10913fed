"""One synthetic study as a deterministic function of (seed, split, index).

All of a study's randomness comes from ``np.random.default_rng([seed, split_id, index])``, drawn
in a fixed order: availability, findings, patient and geometry, report, then the frontal
picture's texture and noise, then the lateral one's. Labels and reports are therefore the same
whether or not the pictures are rendered (the vocabulary is built without rendering), and the
lateral view, drawn last, changes nothing else when it is unavailable.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from input_pipeline import features as features_lib
from input_pipeline.synthetic_cxr import render, reports
from input_pipeline.synthetic_cxr import scene as scene_lib

SPLITS = ("train", "validation", "test")
SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}


@dataclasses.dataclass(frozen=True)
class Study:
  """One generated study. Images are None when not rendered or not available."""

  study_id: str
  labels: np.ndarray  # float32 [14] in features.LABELS order
  finding: int  # 1 if any of the 13 pathologies is 1
  report: str  # the FINDINGS text (written even when unavailable)
  available: np.ndarray  # bool [3]: (frontal, lateral, text)
  attributes: dict[str, np.float32]
  scene: scene_lib.Scene
  truth: dict[str, scene_lib.TruthState]
  frontal: np.ndarray | None = None  # uint8 [S, S, 1]
  lateral: np.ndarray | None = None  # uint8 [S, S, 1]


def _split_id(split: str) -> int:
  if split not in SPLIT_IDS:
    raise ValueError(f"Unknown split {split!r}; the synthetic dataset has splits {SPLITS}.")
  return SPLIT_IDS[split]


def study_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The random generator of one study."""
  return np.random.default_rng([seed, _split_id(split), index])


def sample_availability(
  rng: np.random.Generator, p_missing_lateral: float, p_missing_text: float
) -> np.ndarray:
  """bool [3] (frontal, lateral, text): the frontal view always, never both others missing.

  The text is dropped only from studies that keep their lateral view, with the probability
  that makes its overall rate ``p_missing_text``.
  """
  if not (
    0 <= p_missing_lateral < 1 and 0 <= p_missing_text and p_missing_lateral + p_missing_text <= 1
  ):
    raise ValueError(
      f"Missing rates must satisfy 0 <= p_missing_lateral < 1, p_missing_text >= 0 and "
      f"p_missing_lateral + p_missing_text <= 1 (a study keeps the lateral view or the "
      f"text); got p_missing_lateral={p_missing_lateral}, p_missing_text={p_missing_text}."
    )
  lateral = rng.random() >= p_missing_lateral
  text = not lateral or rng.random() >= p_missing_text / (1 - p_missing_lateral)
  return np.array([True, lateral, text])


def generate_study(
  seed: int,
  split: str,
  index: int,
  image_size: int = 64,
  p_missing_lateral: float = 0.15,
  p_missing_text: float = 0.05,
  render_images: bool = True,
) -> Study:
  """The study ``index`` of ``split``; images only when ``render_images`` (and available)."""
  rng = study_rng(seed, split, index)
  available = sample_availability(rng, p_missing_lateral, p_missing_text)
  truth, profiles = scene_lib.sample_truth(rng)
  scene = scene_lib.sample_scene(truth, profiles, rng)
  report, labels = reports.write_report(truth, scene, rng, lateral_available=bool(available[1]))
  frontal = lateral = None
  if render_images:
    frontal = render.render_frontal(scene, image_size, rng)
    if available[1]:
      lateral = render.render_lateral(scene, image_size, rng)
  return Study(
    study_id=f"synthetic-{seed}-{split}-{index:06d}",
    labels=labels,
    finding=int(features_lib.finding_from_labels(labels)),
    report=report,
    available=available,
    attributes=scene_lib.scene_attributes(scene),
    scene=scene,
    truth=truth,
    frontal=frontal,
    lateral=lateral,
  )


def split_reports(
  seed: int,
  split: str,
  num_studies: int,
  p_missing_lateral: float = 0.15,
  p_missing_text: float = 0.05,
) -> Iterator[str]:
  """The reports of the studies of ``split`` that have their text (no rendering)."""
  for index in range(num_studies):
    study = generate_study(
      seed,
      split,
      index,
      p_missing_lateral=p_missing_lateral,
      p_missing_text=p_missing_text,
      render_images=False,
    )
    if study.available[2]:
      yield study.report
