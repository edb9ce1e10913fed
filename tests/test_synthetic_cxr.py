"""The embedded synthetic dataset: determinism, labels vs pictures and reports, the tfds build.

Statistics use the generator functions directly (cheap without rendering); the built dataset is
the session's ``synthetic_cxr/tiny`` (conftest's ``synthetic_tiny_dir``).
"""

import dataclasses
import io

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from input_pipeline import batching
from input_pipeline import features as features_lib
from input_pipeline.synthetic_cxr import render, reports, studies
from input_pipeline.synthetic_cxr import scene as scene_lib
from input_pipeline.synthetic_cxr import synthetic_cxr_dataset_builder as builder_lib
from mopoe_jax.data import text as text_lib

LABEL = {name: i for i, name in enumerate(features_lib.LABELS)}
TINY = next(c for c in builder_lib.Builder.BUILDER_CONFIGS if c.name == "tiny")


def _studies(n, split="train", render_images=False, size=32, seed=0, **kw):
  return [
    studies.generate_study(seed, split, i, size, render_images=render_images, **kw)
    for i in range(n)
  ]


# 1. Determinism.


def test_same_seed_split_index_gives_identical_bytes():
  a = studies.generate_study(0, "train", 7, 32)
  b = studies.generate_study(0, "train", 7, 32)
  assert a.frontal.tobytes() == b.frontal.tobytes()
  assert (a.lateral is None) == (b.lateral is None)
  if a.lateral is not None:
    assert a.lateral.tobytes() == b.lateral.tobytes()
  assert a.report == b.report and a.study_id == b.study_id
  np.testing.assert_array_equal(a.labels, b.labels)  # NaNs compare equal here
  assert a.attributes == b.attributes
  for other in (
    studies.generate_study(0, "train", 8, 32),
    studies.generate_study(1, "train", 7, 32),
    studies.generate_study(0, "test", 7, 32),
  ):
    assert other.frontal.tobytes() != a.frontal.tobytes()


def test_no_two_studies_look_alike():
  frontals = np.stack([s.frontal for s in _studies(64, render_images=True)]).astype(np.float32)
  diffs = np.abs(frontals[:, None] - frontals[None]).mean(axis=(2, 3, 4))
  assert diffs[~np.eye(len(frontals), dtype=bool)].min() > 2.0  # grey levels, mean per pixel


def test_rendering_does_not_change_labels_or_report():
  for index in range(20):
    drawn = studies.generate_study(3, "validation", index, 32)
    plain = studies.generate_study(3, "validation", index, 32, render_images=False)
    assert drawn.report == plain.report
    np.testing.assert_array_equal(drawn.labels, plain.labels)
    assert plain.frontal is None and plain.lateral is None
    assert drawn.frontal.shape == (32, 32, 1) and drawn.frontal.dtype == np.uint8


def test_unknown_split_says_which_exist():
  with pytest.raises(ValueError, match="train"):
    studies.generate_study(0, "validate", 0)


# 2. Availability.


@pytest.mark.parametrize("p_lateral,p_text", [(0.15, 0.05), (0.3, 0.1)])
def test_availability_shares_near_the_configured_rates(p_lateral, p_text):
  available = np.stack(
    [s.available for s in _studies(4000, p_missing_lateral=p_lateral, p_missing_text=p_text)]
  )
  assert available.dtype == bool and available[:, 0].all()  # frontal always
  assert not (~available[:, 1] & ~available[:, 2]).any()  # never lateral and text
  # Binomial standard errors at n = 4000 are below 0.008: these bounds are > 3 sigma.
  assert abs((~available[:, 1]).mean() - p_lateral) < 0.025
  assert abs((~available[:, 2]).mean() - p_text) < 0.015


def test_impossible_missing_rates_fail_with_the_values():
  with pytest.raises(ValueError, match="p_missing_lateral=0.7"):
    studies.generate_study(0, "train", 0, p_missing_lateral=0.7, p_missing_text=0.4)


# 3. Labels: prevalences, the report, and the pictures.


@pytest.fixture(scope="module")
def many_studies():
  return _studies(3000)


def test_label_values_and_prevalences_are_plausible(many_studies):
  labels = np.stack([s.labels for s in many_studies])
  assert labels.dtype == np.float32 and labels.shape == (3000, 14)
  assert set(np.unique(labels[~np.isnan(labels)])) <= {-1.0, 0.0, 1.0}
  no_finding = labels[:, LABEL["No Finding"]] == 1
  assert 0.35 < no_finding.mean() < 0.5
  pathologies = np.delete(labels, LABEL["No Finding"], axis=1)
  devices = list(scene_lib.PATHOLOGIES).index("Support Devices")
  stated = np.isin(np.delete(pathologies, devices, axis=1), (1.0, -1.0)).any(axis=1)
  np.testing.assert_array_equal(no_finding, ~stated)  # CheXpert's rule
  positive = (labels == 1).mean(axis=0)
  assert positive[LABEL["Support Devices"]] > 0.15
  assert positive[LABEL["Fracture"]] < 0.06 and positive[LABEL["Pleural Other"]] < 0.06
  for label in ("Atelectasis", "Pleural Effusion", "Pneumonia", "Edema"):
    assert (labels[:, LABEL[label]] == -1).mean() > 0.01, label
  # Correlations: edema goes with cardiomegaly and effusion.
  edema = labels[:, LABEL["Edema"]] == 1
  for label in ("Cardiomegaly", "Pleural Effusion"):
    other = labels[:, LABEL[label]] == 1
    assert other[edema].mean() > 1.5 * other[~edema].mean(), label
  findings = np.array([s.finding for s in many_studies])
  np.testing.assert_array_equal(findings, features_lib.finding_from_labels(labels))


def test_labels_follow_the_report(many_studies):
  hedges = (
    "possible",
    "questionable",
    "cannot exclude",
    "not excluded",
    "borderline",
    "may",
    "versus",
    "top normal",
  )
  unmentioned, drawn = 0, 0
  for s in many_studies:
    text = s.report.lower()
    if (s.labels == -1).any():
      assert any(h in text for h in hedges), s.report
    for pathology in scene_lib.PATHOLOGIES:
      state, value = s.truth[pathology], s.labels[LABEL[pathology]]
      if state == scene_lib.TruthState.PRESENT:
        drawn += 1
        unmentioned += np.isnan(value)
        assert value == 1 or np.isnan(value)
      elif state == scene_lib.TruthState.ABSENT:
        assert value == 0 or np.isnan(value)
      else:  # EQUIVOCAL, DOUBT
        assert value == -1
  assert 0.05 < unmentioned / drawn < 0.15  # "now and then" a finding is left out


def test_rendering_attributes_agree_with_labels(many_studies):
  def attr(name):
    return np.array([s.attributes[name] for s in many_studies])

  labels = np.stack([s.labels for s in many_studies])
  pos = lambda label: labels[:, LABEL[label]] == 1
  neg = lambda label: labels[:, LABEL[label]] == 0
  heart = attr("heart_width_ratio")
  assert heart[pos("Cardiomegaly")].min() > heart[neg("Cardiomegaly")].max()
  mediastinum = attr("mediastinum_width")
  assert (
    mediastinum[pos("Enlarged Cardiomediastinum")].min()
    > mediastinum[neg("Enlarged Cardiomediastinum")].max()
  )
  effusion = np.maximum(attr("effusion_level_left"), attr("effusion_level_right"))
  assert (effusion[pos("Pleural Effusion")] > 0).all()
  assert (effusion[neg("Pleural Effusion")] == 0).all()
  for label, name in (
    ("Pneumothorax", "pneumothorax_size"),
    ("Lung Lesion", "nodule_size"),
    ("Edema", "edema_severity"),
    ("Fracture", "fracture_displacement"),
    ("Atelectasis", "atelectasis_length"),
    ("Support Devices", "device_count"),
    ("Pleural Other", "pleural_thickening"),
    ("Lung Opacity", "opacity_count"),
    ("Pneumonia", "opacity_count"),
    ("Consolidation", "opacity_count"),
  ):
    values = attr(name)
    assert (values[pos(label)] > 0).all(), label
    if label not in ("Lung Opacity", "Pneumonia", "Consolidation"):  # patches are shared
      assert (values[neg(label)] == 0).all(), label


@pytest.fixture(scope="module")
def rendered_64():
  return _studies(600, render_images=True, size=64, p_missing_lateral=0.0, p_missing_text=0.0)


def _mean_image(group, view):
  return np.mean([getattr(s, view)[..., 0].astype(np.float32) for s in group], axis=0)


def test_cardiomegaly_widens_the_heart_in_the_pictures(rendered_64):
  heart = np.array([s.attributes["heart_width_ratio"] for s in rendered_64])
  big = [s for s, h in zip(rendered_64, heart) if h > 0.55]
  normal = [s for s, h in zip(rendered_64, heart) if h < 0.47]
  assert len(big) > 30 and len(normal) > 100
  # Frontal: the heart's left border (image right of the midline, above the dome) moves out
  # into the dark left lung; lateral: the heart reaches back into the lung.
  difference = _mean_image(big, "frontal") - _mean_image(normal, "frontal")
  assert difference[30:42, 41:47].mean() > 8  # rows: above the dome; columns: x = 0.3 .. 0.45
  difference = _mean_image(big, "lateral") - _mean_image(normal, "lateral")
  assert difference[32:44, 28:34].mean() > 8  # behind the normal heart's back border
  # And the measured width of bright pixels across the lower chest grows with the ratio.
  rows = slice(34, 40)
  width = np.array(
    [
      (s.frontal[rows, 8:56, 0] > np.percentile(s.frontal, 60)).sum(axis=1).mean()
      for s in rendered_64
    ]
  )
  assert np.corrcoef(width, heart)[0, 1] > 0.25


def test_effusion_brightens_the_bases(rendered_64):
  def level(s):
    return max(s.attributes["effusion_level_left"], s.attributes["effusion_level_right"])

  large = [s for s in rendered_64 if level(s) > 0.2]
  small = [s for s in rendered_64 if 0 < level(s) < scene_lib.FRONTAL_HIDDEN_EFFUSION]
  dry = [s for s in rendered_64 if level(s) == 0 and not s.scene.patches]
  assert len(large) > 20 and len(small) >= 3 and len(dry) > 200
  bases = (slice(38, 46), np.r_[8:22, 42:56])  # frontal: lower, lateral parts of both lungs
  brighter = _mean_image(large, "frontal")[bases].mean() - _mean_image(dry, "frontal")[bases].mean()
  assert brighter > 15
  # A small effusion is hidden on the frontal view and seen in the lateral's posterior angle.
  for s in small:
    dry = dataclasses.replace(s.scene, effusion_left=0.0, effusion_right=0.0)
    views = {}
    for name, scene in (("fluid", s.scene), ("dry", dry)):
      views[name] = [
        f(scene, 64, np.random.default_rng(0))[..., 0].astype(np.float32)
        for f in (render.render_frontal, render.render_lateral)
      ]
    np.testing.assert_array_equal(views["fluid"][0], views["dry"][0])
    lateral_change = views["fluid"][1] - views["dry"][1]
    assert lateral_change.max() > 30 and (lateral_change > 15).sum() >= 6
    rows, cols = np.nonzero(lateral_change > 15)
    assert rows.min() > 36 and cols.min() > 32  # low and posterior (image right)


def test_small_nodules_show_in_the_frontal_view_only():
  scene = next(s.scene for s in _studies(400) if s.scene.nodule_radius == 0)
  rng = lambda: np.random.default_rng(0)
  small = dataclasses.replace(
    scene, nodule_radius=0.05, nodule_side=1, nodule_x_rel=0.6, nodule_y=-0.2
  )
  large = dataclasses.replace(small, nodule_radius=0.1)
  frontal = render.render_frontal(scene, 64, rng()).astype(np.float32)
  lateral = render.render_lateral(scene, 64, rng()).astype(np.float32)
  assert (render.render_frontal(small, 64, rng()) - frontal).max() > 40
  assert render.render_lateral(small, 64, rng()).tobytes() == lateral.astype(np.uint8).tobytes()
  assert (render.render_lateral(large, 64, rng()) - lateral).max() > 40


# 4. Text.


def test_vocabulary_covers_the_phrase_bank():
  vocabulary = text_lib.Vocabulary.build(studies.split_reports(0, "train", 6000), min_count=3)
  missing = {
    word: sentence
    for sentence in reports.phrase_bank_sentences()
    for word in text_lib.tokenize(sentence)
    if word not in vocabulary.words
  }
  assert not missing


def test_reports_mostly_fit_the_small_text_length(many_studies):
  lengths = np.array([len(text_lib.tokenize(s.report)) for s in many_studies])
  assert lengths.min() >= 3
  assert np.mean(lengths < 64) > 0.85


# 5. The built tfds dataset (tiny).


def test_png_encoding_round_trips():
  image = np.random.default_rng(0).integers(0, 256, (5, 7, 1), dtype=np.uint8)
  for level in (0, 6):
    decoded = np.asarray(Image.open(io.BytesIO(builder_lib.encode_png(image, level))))
    np.testing.assert_array_equal(decoded, image[..., 0])
  with pytest.raises(ValueError, match="uint8"):
    builder_lib.encode_png(image.astype(np.float32))


def test_built_dataset_shapes_metadata_and_contents(synthetic_tiny_dir):
  builder = tfds.builder("synthetic_cxr/tiny", data_dir=synthetic_tiny_dir)
  assert builder.info.splits["train"].num_examples == TINY.num_train
  assert builder.info.splits["validation"].num_examples == TINY.num_validation
  assert builder.info.splits["test"].num_examples == TINY.num_test
  # The vocabulary: in the metadata, from the train split's reports only.
  words = builder.info.metadata["vocabulary"]
  expected = text_lib.Vocabulary.build(
    studies.split_reports(
      TINY.seed, "train", TINY.num_train, TINY.p_missing_lateral, TINY.p_missing_text
    ),
    min_count=TINY.vocabulary_min_count,
  )
  assert list(words) == expected.words
  vocabulary = batching.load_vocabulary(builder)
  assert vocabulary == expected

  examples = list(tfds.as_numpy(builder.as_dataset(split="validation")))
  assert len(examples) == TINY.num_validation
  size, length = TINY.image_size, TINY.text_length
  ids = set()
  for ex in examples:
    assert ex["frontal"].shape == (size, size, 1) and ex["frontal"].dtype == np.uint8
    assert ex["lateral"].shape == (size, size, 1) and ex["lateral"].dtype == np.uint8
    assert ex["text"].shape == (length,) and ex["text"].dtype == np.int32
    assert ex["available"].shape == (3,) and ex["available"].dtype == bool
    assert ex["labels"].shape == (14,) and ex["labels"].dtype == np.float32
    assert ex["finding"] == features_lib.finding_from_labels(ex["labels"])
    assert set(ex["attributes"]) == set(scene_lib.ATTRIBUTE_NAMES)
    assert all(np.asarray(v).dtype == np.float32 for v in ex["attributes"].values())
    report = ex["report"].decode()
    if ex["available"][2]:
      np.testing.assert_array_equal(ex["text"], vocabulary.encode(report, length))
    else:
      assert report == "" and (ex["text"] == text_lib.PAD_ID).all()
    if not ex["available"][1]:
      assert not ex["lateral"].any()
    ids.add(ex["study_id"].decode())
    # The stored example is the generator's study of the same index.
    index = int(ex["study_id"].decode().rsplit("-", 1)[1])
    study = studies.generate_study(
      TINY.seed, "validation", index, size, TINY.p_missing_lateral, TINY.p_missing_text
    )
    np.testing.assert_array_equal(ex["frontal"], study.frontal)
    np.testing.assert_array_equal(ex["labels"], study.labels)
  assert len(ids) == len(examples)


def test_load_vocabulary_says_what_is_missing():
  class Unprepared:
    info = type("Info", (), {"metadata": None, "full_name": "x/y/1.0.0"})()

  with pytest.raises(ValueError, match="has no vocabulary in its metadata"):
    batching.load_vocabulary(Unprepared())
