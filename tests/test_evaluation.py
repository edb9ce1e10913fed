"""Tests of the evaluators: probes, generation grids, coherence, likelihood, reports.

One module-scoped run of `evaluate.run_evaluation` on `synthetic_cxr/tiny` with a randomly initialised
tiny model (configs/tiny.py) feeds most tests; the probe and likelihood math is also tested
directly on hand-made arrays.
"""

import json
import os
import types

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import load_data, tiny_config
from input_pipeline import features
from mopoe_jax import classifiers
from mopoe_jax import evaluate
from mopoe_jax.evaluators import likelihood, probes as probes_lib
from mopoe_jax import model as model_lib
from mopoe_jax import subsets
from mopoe_jax import visualize

SUBSETS = ["frontal", "lateral", "text", "frontal+lateral", "frontal+text", "lateral+text",
           "frontal+lateral+text"]
LIKELIHOOD_SAMPLES = 32


class RecordingWriter:
  """Stands in for a clu metric writer."""

  def __init__(self):
    self.scalars, self.images, self.flushed = {}, {}, False

  def write_scalars(self, step, scalars):
    self.scalars.update(scalars)

  def write_images(self, step, images):
    self.images.update(images)

  def flush(self):
    self.flushed = True


@pytest.fixture(scope="module")
def evaluated(synthetic_tiny_dir, tmp_path_factory):
  config = tiny_config(synthetic_tiny_dir)
  config.eval.likelihood_samples = LIKELIHOOD_SAMPLES
  config.eval.probe_max_iter = 100  # random codes are often separable: lbfgs would run long
  data = load_data(config)
  vocab = data.vocab
  model = model_lib.model_from_config(
      config.model, modalities=config.data.modalities, image_size=config.data.image_size,
      text_length=config.data.text_length, vocab_size=len(vocab))
  batch = next(data.eval_batches("train", batch_size=8))
  inputs, available = model_lib.inputs_from_batch(batch, model.modalities)
  rngs = {name: jax.random.key(i) for i, name in enumerate(("params", "sample", "dropout"))}
  variables = jax.jit(model.init, static_argnums=3)(rngs, inputs, available, False)
  workdir = str(tmp_path_factory.mktemp("workdir"))
  writer = RecordingWriter()
  results = evaluate.run_evaluation(config, workdir, model, variables, data, writer=writer)
  return types.SimpleNamespace(
      config=config, workdir=workdir, eval_dir=os.path.join(workdir, "eval"), results=results,
      vocab=vocab, data=data, model=model, writer=writer)


# ------------------------------------------------------------------------------------------------
# Probes on hand-made arrays.


def _easy_codes(rng, num, num_subsets=2, dim=4, prevalence=0.3, signal=2.0):
  targets = (rng.random((num, 2)) < prevalence).astype(np.int32)  # two labels
  codes = np.stack([np.concatenate([targets * signal, np.zeros((num, dim - 2))], axis=1)
                    + rng.normal(size=(num, dim)) for _ in range(num_subsets)])
  return codes, np.ones((num, num_subsets), bool), targets


def _probes(train, test, **kwargs):
  kwargs.setdefault("num_train_examples", 200)
  return probes_lib.linear_probes(*train, *test, ["a", "b"], label_names=["Finding", "X"],
                                  **kwargs)


def test_probe_beats_random_on_easy_codes():
  rng = np.random.default_rng(0)
  probes = _probes(_easy_codes(rng, 300), _easy_codes(rng, 200), repeats=3, legacy=True)
  for name in ("a", "b"):
    for label in ("Finding", "X"):
      assert probes["subsets"][name][label] > probes["random"][label] + 0.4
      assert 0.0 <= probes["std"][name][label] < 0.1
      assert 0.0 <= probes["legacy"][name][label] <= 1.0
  assert not any(probes["skipped"].values())


def test_one_class_label_is_skipped_and_reported():
  rng = np.random.default_rng(1)
  codes, valid, targets = _easy_codes(rng, 300)
  targets[:, 1] = 0  # label "X" never positive in the train pool
  probes = _probes((codes, valid, targets), _easy_codes(rng, 200))
  for name in ("a", "b"):
    assert probes["subsets"][name]["X"] is None
    assert probes["skipped"][name]["X"] == "n/a (one class in the draw)"
    assert probes["subsets"][name]["Finding"] is not None
  assert "n/a (one class in the draw)" in probes_lib.probes_markdown(probes)


def test_probes_reject_a_tiny_test_split():
  rng = np.random.default_rng(2)
  with pytest.raises(ValueError, match=r"'test' split has 5 studies"):
    _probes(_easy_codes(rng, 100), _easy_codes(rng, 5))
  codes, valid, targets = _easy_codes(rng, 100)
  targets[:, 0] = 0
  targets[0, 0] = 1  # one positive Finding
  with pytest.raises(ValueError, match=r"'test' split has 1 positive and 99 negative"):
    _probes(_easy_codes(rng, 100), (codes, valid, targets))


def test_legacy_metric_swaps_the_arguments():
  y_true = np.array([1, 0, 0, 0])
  hard = np.array([1, 1, 1, 0])
  # As the reference computes it: the predictions are the "truth" (3 positives), the labels the
  # scores. Threshold 1 keeps study 0: precision 1, recall 1/3; threshold 0 keeps all: precision
  # 3/4, recall 1. AP = 1/3 * 1 + 2/3 * 3/4 = 5/6. The unswapped AP would be 1/3.
  assert probes_lib.legacy_average_precision(y_true, hard) == pytest.approx(5 / 6)


def test_label_targets_count_only_ones_as_positive():
  labels = np.full((1, len(features.LABELS)), np.nan, np.float32)
  labels[0, :4] = [1.0, 0.0, -1.0, 1.0]
  targets = classifiers.label_targets(labels, np.array([1]))
  assert targets.shape == (1, len(features.PROBE_LABELS))
  np.testing.assert_array_equal(targets[0, :5], [1, 1, 0, 0, 1])
  assert targets[0, 5:].sum() == 0


# ------------------------------------------------------------------------------------------------
# Likelihood math on hand-made arrays.


def test_summarize_likelihood_masks_and_averages():
  s, m, k, n = 4, 2, 3, 5
  log_lik = np.full((s, m, k, n), -2.0)
  log_ratio = np.zeros((s, k, n))
  log_ratio[:, :, 0] = np.log([1.0, 2.0, 3.0, 6.0])[:, None]  # study 0: mean weight e^-2 * 3
  kl = np.ones((k, n))
  valid = np.ones((n, k), bool)
  valid[4, 2] = False
  available = np.ones((n, m), bool)
  available[1, 1] = False
  out = likelihood.summarize_likelihood(log_lik, log_ratio, kl, valid, available,
                                        ["a", "b", "c"], ["x", "y"])
  assert out["a"]["x"]["log_px"] == pytest.approx((-2.0 * 4 + (-2.0 + np.log(3.0))) / 5)
  assert out["a"]["y"]["num_examples"] == 4
  assert out["c"]["x"]["num_examples"] == 4
  # joint: study 1 has x only (-2), the others x and y (-4).
  assert out["b"]["joint"]["elbo"] == pytest.approx((-4.0 * 4 - 2.0) / 5 - 1.0)
  assert list(out["a"]["x"]["log_px_by_samples"]) == ["1", "2", "4"]


# ------------------------------------------------------------------------------------------------
# The whole evaluation on synthetic_cxr/tiny.


def test_probes_json_has_the_exact_shape(evaluated):
  with open(os.path.join(evaluated.eval_dir, "probes.json")) as f:
    probes = json.load(f)
  assert list(probes["subsets"]) == SUBSETS
  assert list(probes["random"]) == list(features.PROBE_LABELS)
  for name in SUBSETS:
    assert list(probes["subsets"][name]) == list(features.PROBE_LABELS)
    for label, value in probes["subsets"][name].items():
      if value is None:
        assert label in probes["skipped"][name]
      else:
        assert 0.0 <= value <= 1.0
    assert probes["subsets"][name]["Finding"] is not None
  assert all(0.0 <= v <= 1.0 for v in probes["random"].values())
  with open(os.path.join(evaluated.eval_dir, "probes.md")) as f:
    table = f.read()
  assert "| method | " + " | ".join(SUBSETS) + " |" in table
  assert "| random |" in table


def test_generation_pngs_have_the_expected_size(evaluated):
  size = evaluated.config.data.image_size
  num = evaluated.config.eval.generation_studies
  cell, pad = size + 2, 2
  generation = evaluated.results["generation"]
  for name in SUBSETS:
    given_images = len([m for m in name.split("+") if m != "text"])
    path = os.path.join(evaluated.eval_dir, generation["files"][name]["png"])
    with Image.open(path) as image:
      assert image.size == (num * cell + pad, (given_images + 2) * cell + pad + pad)
  with Image.open(os.path.join(evaluated.eval_dir, "generation", "prior.png")) as image:
    assert image.size == (evaluated.config.eval.prior_samples * cell + pad, 2 * cell + pad)
  images = evaluated.writer.images
  assert set(images) == {f"eval_generation/{n}" for n in SUBSETS + ["prior"]}
  assert all(g.dtype == np.uint8 and g.ndim == 4 and g.shape[-1] == 3 for g in images.values())


def test_generated_reports_are_vocabulary_words(evaluated):
  reports = evaluated.results["generation"]["reports"]
  words = set(evaluated.vocab.words)
  assert set(reports) == set(SUBSETS + ["prior"])
  for name, texts in reports.items():
    assert len(texts) == (evaluated.config.eval.prior_samples if name == "prior"
                          else evaluated.config.eval.generation_studies)
    assert all(set(text.split()) <= words for text in texts)
    with open(os.path.join(evaluated.eval_dir, "generation",
                           "prior.md" if name == "prior" else f"from_{name}.md")) as f:
      page = f.read()
    assert all(text.replace("|", "\\|") in page for text in texts)


def test_importance_sampling_bound_grows_with_samples(evaluated):
  subsets_out = evaluated.results["likelihood"]["subsets"]
  entries = [e for per_target in subsets_out.values() for e in per_target.values() if e]
  assert len(entries) == len(SUBSETS) * 4  # three modalities and the joint
  counts = [str(s) for s in (1, 2, 4, 8, 16, 32)]
  means = [np.mean([e["log_px_by_samples"][c] for e in entries]) for c in counts]
  assert all(b >= a for a, b in zip(means, means[1:])), means
  assert np.mean([e["log_px"] for e in entries]) >= np.mean([e["elbo"] for e in entries])
  assert all(np.isfinite(e["log_px"]) and np.isfinite(e["elbo"]) for e in entries)


def test_coherence_covers_every_subset_modality_and_label(evaluated):
  coherence = evaluated.results["coherence"]
  assert list(coherence["subsets"]) == SUBSETS
  for name in SUBSETS:
    for m in ("frontal", "lateral", "text"):
      scores = coherence["subsets"][name][m]
      assert list(scores) == list(features.PROBE_LABELS)
      for label, value in scores.items():
        assert (label in coherence["skipped"][name][m]) if value is None else 0 <= value <= 1
  assert all(coherence["real"][m]["Finding"] is not None for m in ("frontal", "lateral", "text"))
  attributes = coherence["attributes"]
  assert "heart_width_ratio" in attributes["names"]
  for per_view in [attributes["real"]] + list(attributes["subsets"].values()):
    assert set(per_view) == {"frontal", "lateral"}
    assert all(v is None or -1.0 <= v <= 1.0 for r in per_view.values() for v in r.values())


def test_results_and_report_are_written(evaluated):
  with open(os.path.join(evaluated.eval_dir, "results.json")) as f:
    results = json.load(f)  # strict JSON: no NaN
  assert {"settings", "probes", "generation", "coherence", "likelihood"} <= set(results)
  with open(os.path.join(evaluated.eval_dir, "report.md")) as f:
    report = f.read()
  for name in SUBSETS + ["prior"]:
    png = results["generation"]["files"][name]["png"]
    assert f"]({png})" in report and os.path.exists(os.path.join(evaluated.eval_dir, png))
  assert evaluated.writer.flushed
  assert "eval_probe_ap/frontal+lateral+text/Finding" in evaluated.writer.scalars


def test_classifier_checkpoint_is_reused_and_checked(evaluated):
  config = evaluated.config
  directory = classifiers.classifier_dir_from_config(config, evaluated.workdir)
  kwargs = dict(modalities=evaluated.model.modalities, vocab_size=len(evaluated.vocab),
                classifier_dir=directory)
  restored = classifiers.get_classifiers(config, evaluated.data, **kwargs)
  assert "heart_width_ratio" in restored.attribute_names
  other = config.copy_and_resolve_references()
  other.classifier.image_widths = (4, 4)
  with pytest.raises(ValueError, match="other settings"):
    classifiers.get_classifiers(other, evaluated.data, **kwargs)


def test_grids_have_a_separator_and_missing_cells():
  above = {"frontal": np.ones((3, 4, 4, 1), np.float32)}
  below = {"frontal": np.zeros((3, 4, 4, 1), np.float32), "text": np.zeros((3, 5), np.int32)}
  grid = visualize.comparison_grid(above, below,
                                   above_available={"frontal": np.array([True, False, True])})
  assert grid.shape == (2 * 6 + 2 + 2, 3 * 6 + 2, 3) and grid.dtype == np.uint8
  assert tuple(grid[7, 5]) == visualize.SEPARATOR_RGB
  assert tuple(grid[2, 2]) == (255, 255, 255)          # given, present
  assert tuple(grid[2, 8]) == visualize.MISSING_RGB     # given, missing: diagonal
  assert tuple(grid[10, 2]) == (0, 0, 0)               # generated
  assert subsets.subset_names(("frontal", "lateral", "text")) == SUBSETS
