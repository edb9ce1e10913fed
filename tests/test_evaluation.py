"""Tests of the evaluators: probes, generation grids, coherence, likelihood, reports.

One module-scoped run of `evaluate.run_evaluation` on `synthetic_cxr/tiny` with a randomly
initialised tiny model (configs/tiny.py) feeds most tests; the probe and likelihood math is also
tested directly on hand-made arrays.
"""

import json
import os
import types

from conftest import RecordingWriter, load_data, loop_initial_state, tiny_config
import jax
import numpy as np
from PIL import Image
import pytest
from scipy import stats

from input_pipeline import features
from mopoe_jax.data import labels as labels_lib
from mopoe_jax.data import visualize
from mopoe_jax.evaluation import charts, classifiers, evaluate, likelihood
from mopoe_jax.evaluation import probes as probes_lib
from mopoe_jax.vae import model as model_lib
from mopoe_jax.vae import subsets

SUBSETS = [
  "frontal",
  "lateral",
  "text",
  "frontal+lateral",
  "frontal+text",
  "lateral+text",
  "frontal+lateral+text",
]
LIKELIHOOD_SAMPLES = 32


@pytest.fixture(scope="module")
def evaluated(synthetic_tiny_dir, tmp_path_factory):
  config = tiny_config(synthetic_tiny_dir)
  config.eval.likelihood.samples = LIKELIHOOD_SAMPLES
  config.eval.probes.max_iter = 100  # random codes are often separable: lbfgs would run long
  data = load_data(config)
  vocab = data.vocab
  model = model_lib.create_model(config, len(vocab))
  # An untrained model, initialised by the training loop's own init program (tests/test_train.py
  # compiles it; the persistent cache usually holds it by now).
  state = loop_initial_state(config, model)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  workdir = str(tmp_path_factory.mktemp("workdir"))
  writer = RecordingWriter()
  results = evaluate.run_evaluation(config, workdir, model, variables, data, writer=writer)
  return types.SimpleNamespace(
    config=config,
    workdir=workdir,
    eval_dir=os.path.join(workdir, "eval"),
    results=results,
    vocab=vocab,
    data=data,
    model=model,
    writer=writer,
  )


# ------------------------------------------------------------------------------------------------
# Probes on hand-made arrays.


def _easy_codes(rng, num, num_subsets=2, dim=4, prevalence=0.3, signal=2.0):
  targets = (rng.random((num, 2)) < prevalence).astype(np.int32)  # two labels
  codes = np.stack(
    [
      np.concatenate([targets * signal, np.zeros((num, dim - 2))], axis=1)
      + rng.normal(size=(num, dim))
      for _ in range(num_subsets)
    ]
  )
  return codes, np.ones((num, num_subsets), bool), targets


def _probes(train, test, draws=None, **settings):
  settings = probes_lib.ProbeSettings(
    label_names=["Finding", "X"], **{"num_train_examples": 200, **settings}
  )
  return probes_lib.linear_probes(
    probes_lib.ProbeInputs(*train),
    probes_lib.ProbeInputs(*test),
    ["a", "b"],
    settings,
    draws=draws,
  )


def test_probe_beats_random_on_easy_codes():
  rng = np.random.default_rng(0)
  probes = _probes(_easy_codes(rng, 300), _easy_codes(rng, 200), repeats=3)
  for name in ("a", "b"):
    for label in ("Finding", "X"):
      assert probes.subsets[name][label] > probes.random[label] + 0.4
      assert 0.0 <= probes.std[name][label] < 0.1
      low, high = probes.interval[name][label]
      assert low <= probes.subsets[name][label] <= high
      assert len(probes.draws[name][label]) == 3
      assert 0.0 <= probes.legacy.subsets[name][label] <= 1.0
      assert len(probes.legacy.draws[name][label]) == 3
  assert not any(probes.skipped.values())
  markdown = probes_lib.probes_markdown(probes)
  assert "LEGACY" in markdown and "95% interval of the mean" in markdown


def test_every_subset_trains_on_every_drawn_study_valid_for_it():
  # Shared draws: a study drawn is used by every subset valid for it (as often as drawn) and by
  # no other; with complete studies all subsets train on the same rows.
  valid = np.array([[1, 1, 1], [1, 0, 0], [0, 1, 0], [1, 1, 1], [0, 0, 0]], bool)
  draw = np.array([0, 1, 1, 2, 3, 4, 0])
  rows = probes_lib.subset_rows(draw, valid)
  np.testing.assert_array_equal(rows[0], [0, 1, 1, 3, 0])
  np.testing.assert_array_equal(rows[1], [0, 2, 3, 0])
  np.testing.assert_array_equal(rows[2], [0, 3, 0])
  for study in draw:
    for k in range(3):
      assert (study in rows[k]) == valid[study, k]
  complete = np.ones((5, 3), bool)
  assert all(np.array_equal(r, draw) for r in probes_lib.subset_rows(draw, complete))


def test_probes_share_their_draws_across_subsets(monkeypatch):
  # Every fit of draw r sees the rows subset_rows gives it: record the fitted rows by the codes.
  rng = np.random.default_rng(5)
  codes, valid, targets = _easy_codes(rng, 120, num_subsets=2)
  codes[:, :, -1] = np.arange(120)  # the last feature is the row number
  valid[::3, 1] = False
  fitted = []

  def recording_fit(train_x, train_y, test_x, max_iter):
    fitted.append(train_x[:, -1].astype(int))
    return np.full(test_x.shape[0], 0.5), np.zeros(test_x.shape[0], int), True

  monkeypatch.setattr(probes_lib, "fit_probe", recording_fit)
  draws = probes_lib.probe_draws(120, 40, repeats=2, seed=3)
  _probes((codes, valid, targets), _easy_codes(rng, 60), draws=draws)
  # Order of the fits: subset, label, draw.
  for k in range(2):
    for j in range(2):
      for r in range(2):
        expected = draws[r][valid[draws[r], k]]
        np.testing.assert_array_equal(fitted[(k * 2 + j) * 2 + r], expected)


def test_probe_draws_are_a_seeded_random_sample():
  draws = probes_lib.probe_draws(60_000, 500, repeats=10, seed=0)
  assert draws.shape == (10, 500) and draws.min() >= 0 and draws.max() < 60_000
  np.testing.assert_array_equal(draws, probes_lib.probe_draws(60_000, 500, repeats=10, seed=0))
  assert not np.array_equal(draws, probes_lib.probe_draws(60_000, 500, repeats=10, seed=1))
  # Not the first studies in file order: spread over the whole split.
  assert np.unique(draws).size > 4_000 and draws.max() > 50_000 and np.median(draws) > 20_000
  # Draw r does not depend on the number of repeats; the draws differ from each other.
  np.testing.assert_array_equal(draws[:3], probes_lib.probe_draws(60_000, 500, 3, seed=0))
  assert not np.array_equal(draws[0], draws[1])
  with pytest.raises(ValueError, match=r"eval\.probes\.repeats=0"):
    probes_lib.probe_draws(100, 10, repeats=0, seed=0)


def test_mean_interval_is_the_t_interval_of_the_mean():
  values = [0.46, 0.49, 0.47, 0.50, 0.44, 0.48, 0.47, 0.45, 0.49, 0.46]
  out = probes_lib.mean_interval(values)
  expected = stats.t.interval(0.95, df=9, loc=np.mean(values), scale=stats.sem(values))
  np.testing.assert_allclose(out["interval"], expected, rtol=1e-12)
  assert out["std"] == pytest.approx(np.std(values, ddof=1)) and out["n"] == 10
  # Closed forms: with 2 values t has 1 df (Cauchy): quantile tan(pi * (0.975 - 0.5)); the
  # half-width is that times |a - b| / 2. With 3 values (2 df) the quantile is
  # (2p - 1) / sqrt(2 p (1 - p)).
  out = probes_lib.mean_interval([0.4, 0.5])
  half = np.tan(np.pi * 0.475) * 0.1 / 2
  np.testing.assert_allclose(out["interval"], [0.45 - half, 0.45 + half], rtol=1e-12)
  p = 0.975
  out = probes_lib.mean_interval([1.0, 2.0, 4.0])
  half = (2 * p - 1) / np.sqrt(2 * p * (1 - p)) * np.std([1.0, 2.0, 4.0], ddof=1) / np.sqrt(3)
  np.testing.assert_allclose(out["interval"], [7 / 3 - half, 7 / 3 + half], rtol=1e-12)
  assert probes_lib.mean_interval([0.5, None])["interval"] is None
  assert probes_lib.mean_interval([])["mean"] is None


def test_paired_difference_cancels_the_shared_draw_effect():
  # A draw effect shared by both subsets widens each interval but not their difference.
  draw_effect = np.array([0.03, -0.02, 0.01, -0.03, 0.02, 0.0, -0.01, 0.025, -0.015, 0.005])
  full = list(0.49 + draw_effect + np.linspace(0, 0.002, 10))
  single = list(0.47 + draw_effect)
  d = probes_lib.paired_difference(full, single)
  np.testing.assert_allclose(d["draws"], np.subtract(full, single))
  expected = probes_lib.mean_interval(np.subtract(full, single))
  assert d["mean"] == pytest.approx(expected["mean"]) and d["interval"] == expected["interval"]
  assert d["interval"][0] > 0.0  # clearly positive, although the two intervals overlap
  assert (
    probes_lib.mean_interval(full)["interval"][0] < probes_lib.mean_interval(single)["interval"][1]
  )
  # Draws where either value is missing are left out of the pairing.
  assert probes_lib.paired_difference([0.5, None, 0.7], [0.4, 0.3, None])["draws"] == [
    pytest.approx(0.1)
  ]
  names = ["frontal", "lateral", "frontal+lateral"]
  per_draw = {
    "frontal": {"F": single},
    "lateral": {"F": list(np.array(single) - 0.1)},
    "frontal+lateral": {"F": full},
  }
  best = probes_lib.full_minus_best_single(per_draw, "F", names)
  assert best.full == "frontal+lateral" and best.best_single == "frontal"
  assert best.mean == pytest.approx(d["mean"]) and best.draws == pytest.approx(d["draws"])


def test_one_class_label_is_skipped_and_reported():
  rng = np.random.default_rng(1)
  codes, valid, targets = _easy_codes(rng, 300)
  targets[:, 1] = 0  # label "X" never positive in the train pool
  probes = _probes((codes, valid, targets), _easy_codes(rng, 200))
  for name in ("a", "b"):
    assert probes.subsets[name]["X"] is None
    assert probes.skipped[name]["X"] == "n/a (one class in the draw)"
    assert probes.subsets[name]["Finding"] is not None
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
  targets = labels_lib.label_targets(labels, "any_positive")
  assert targets.shape == (1, len(features.PROBE_LABELS))
  np.testing.assert_array_equal(targets[0, :5], [1, 1, 0, 0, 1])
  assert targets[0, 5:].sum() == 0


def _labels(**values):
  """One study's 14 labels, NaN (blank) except ``values`` (label name with _ for spaces)."""
  row = np.full((len(features.LABELS),), np.nan, np.float32)
  for name, value in values.items():
    row[features.LABELS.index(name.replace("_", " "))] = value
  return row


def test_finding_rules_on_hand_made_labels():
  studies = {
    "one positive": (_labels(Edema=1.0), 1, 1),
    "one positive plus one uncertain": (_labels(Edema=1.0, Pneumonia=-1.0), 0, 1),
    "two positives plus one uncertain": (_labels(Edema=1.0, Atelectasis=1.0, Pneumonia=-1.0), 1, 1),
    "uncertain only": (_labels(Pneumonia=-1.0), 0, 0),
    "all blank": (_labels(), 0, 0),
    "negatives only": (_labels(Edema=0.0, Fracture=0.0), 0, 0),
    "No Finding does not count": (_labels(No_Finding=1.0), 0, 0),
    "positive, blanks skipped": (_labels(Support_Devices=1.0, Edema=0.0), 1, 1),
  }
  labels = np.stack([v[0] for v in studies.values()])
  reference = labels_lib.finding_targets(labels, "reference")
  any_positive = labels_lib.finding_targets(labels, "any_positive")
  for i, (name, (_, ref, anyp)) in enumerate(studies.items()):
    assert (reference[i], any_positive[i]) == (ref, anyp), name
  np.testing.assert_array_equal(any_positive, features.finding_from_labels(labels))
  np.testing.assert_array_equal(labels_lib.label_targets(labels, "reference")[:, 0], reference)
  with pytest.raises(ValueError, match="data.finding_rule must be one of"):
    labels_lib.finding_targets(labels, "paper")


# ------------------------------------------------------------------------------------------------
# Likelihood math on hand-made arrays.


def test_image_classifier_without_attributes_has_no_attribute_head():
  """MIMIC-CXR and IU X-ray have no ground-truth attributes: the coherence classifiers still
  build (a zero-width Dense head used to fail in its initializer)."""
  module = classifiers.ImageClassifier(widths=(4, 4), num_attributes=0)
  images = np.zeros((3, 16, 16, 1), np.float32)
  params = module.init(jax.random.PRNGKey(0), images)["params"]
  logits, attributes = module.apply({"params": params}, images)
  assert logits.shape == (3, len(labels_lib.PROBE_LABELS)) and attributes.shape == (3, 0)
  assert len(params) == 3  # two convolutions and the label head


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
  out = likelihood.summarize_likelihood(
    log_lik, log_ratio, kl, valid, available, ["a", "b", "c"], ["x", "y"]
  )
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
  repeats = evaluated.config.eval.probes.repeats
  for source in (probes, probes["legacy"]):
    for name in SUBSETS:
      assert all(len(v) == repeats for v in source["draws"][name].values())
  assert len(probes["draws"]["frontal"]["Finding"]) == repeats
  difference = probes["difference"]["standard"]["Finding"]
  assert difference["full"] == SUBSETS[-1] and difference["best_single"] in SUBSETS[:3]
  assert probes["settings"]["finding_rule"] == evaluated.config.data.finding_rule
  # Only the drawn train studies were encoded: the union of the seeded draws.
  num_train = evaluated.data.num_examples(evaluated.config.data.train_split)
  draws = probes_lib.probe_draws(
    num_train, evaluated.config.eval.probes.train_examples, repeats, evaluated.config.eval.seed
  )
  assert probes["num_examples"]["train_studies"] == np.unique(draws).size < num_train
  with open(os.path.join(evaluated.eval_dir, "probes.md")) as f:
    table = f.read()
  assert "|  | " + " | ".join(SUBSETS) + " |" in table
  assert f"| MoPoE (this model): mean ± std over {repeats} draws |" in table
  assert "| 95% interval of the mean (t, 2 df) |" in table
  assert "| random (prevalence) |" in table
  assert "Full set minus the best single modality (standard" in table
  assert "LEGACY metric, label Finding" in table


def test_table1_bar_chart_is_written_and_linked(evaluated):
  path = os.path.join(evaluated.eval_dir, probes_lib.CHART_FILE)
  with Image.open(path) as image:
    assert image.size == charts.CHART_SIZE
    pixels = np.asarray(image.convert("RGB"))
  # Not blank: the bars' colour covers a good part of it, and there is text and lines.
  bar = np.all(np.abs(pixels.astype(int) - (0x4C, 0x72, 0xB0)) < 8, axis=-1)
  assert 0.03 < bar.mean() < 0.5
  assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
  for page in ("probes.md", "report.md"):
    with open(os.path.join(evaluated.eval_dir, page)) as f:
      assert f"]({probes_lib.CHART_FILE})" in f.read()


def test_selected_batches_are_the_studies_at_the_indices(evaluated):
  data, split = evaluated.data, evaluated.config.data.train_split
  indices = np.array([0, 3, 10, 11, 200, data.num_examples(split) - 1])
  batches = list(data.selected_batches(split, indices, batch_size=4))
  assert len(batches) == 2 and all(b["frontal"].shape[0] == 4 for b in batches)
  selected = {
    k: np.concatenate([b[k] for b in batches])[: indices.size]
    for k in ("frontal", "text", "available", "labels", "valid")
  }
  assert selected["valid"].all() and not batches[-1]["valid"][indices.size - 4 :].any()
  every = {
    k: np.concatenate(
      [
        b[k][b["valid"]]
        for b in data.eval_batches(split, batch_size=64, process_index=0, process_count=1)
      ]
    )[indices]
    for k in ("frontal", "text", "available", "labels")
  }
  for k, v in every.items():
    np.testing.assert_array_equal(np.nan_to_num(selected[k], nan=-9), np.nan_to_num(v, nan=-9))
  with pytest.raises(ValueError, match="sorted, unique"):
    data.selected_batches(split, np.array([3, 3]), batch_size=4)


def test_generation_pngs_have_the_expected_size(evaluated):
  size = evaluated.config.data.image_size
  num = evaluated.config.eval.generation.studies
  cell, pad = size + 2, 2
  generation = evaluated.results["generation"]
  for name in SUBSETS:
    given_images = len([m for m in name.split("+") if m != "text"])
    path = os.path.join(evaluated.eval_dir, generation["files"][name]["png"])
    with Image.open(path) as image:
      assert image.size == (num * cell + pad, (given_images + 2) * cell + pad + pad)
  with Image.open(os.path.join(evaluated.eval_dir, "generation", "prior.png")) as image:
    assert image.size == (
      evaluated.config.eval.generation.prior_samples * cell + pad,
      2 * cell + pad,
    )
  images = evaluated.writer.images
  assert set(images) == {f"eval_generation/{n}" for n in SUBSETS + ["prior"]}
  assert all(g.dtype == np.uint8 and g.ndim == 4 and g.shape[-1] == 3 for g in images.values())


def test_generated_reports_are_vocabulary_words(evaluated):
  reports = evaluated.results["generation"]["reports"]
  words = set(evaluated.vocab.words)
  assert set(reports) == set(SUBSETS + ["prior"])
  for name, texts in reports.items():
    assert len(texts) == (
      evaluated.config.eval.generation.prior_samples
      if name == "prior"
      else evaluated.config.eval.generation.studies
    )
    assert all(set(text.split()) <= words for text in texts)
    with open(
      os.path.join(
        evaluated.eval_dir, "generation", "prior.md" if name == "prior" else f"from_{name}.md"
      )
    ) as f:
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
  kwargs = dict(
    modalities=evaluated.model.modalities, vocab_size=len(evaluated.vocab), classifier_dir=directory
  )
  restored = classifiers.get_classifiers(config, evaluated.data, **kwargs)
  assert "heart_width_ratio" in restored.attribute_names
  other = config.copy_and_resolve_references()
  other.classifier.image_widths = (4, 4)
  with pytest.raises(ValueError, match="other settings"):
    classifiers.get_classifiers(other, evaluated.data, **kwargs)


def test_grids_have_a_separator_and_missing_cells():
  above = {"frontal": np.ones((3, 4, 4, 1), np.float32)}
  below = {"frontal": np.zeros((3, 4, 4, 1), np.float32), "text": np.zeros((3, 5), np.int32)}
  grid = visualize.comparison_grid(
    above, below, above_available={"frontal": np.array([True, False, True])}
  )
  assert grid.shape == (2 * 6 + 2 + 2, 3 * 6 + 2, 3) and grid.dtype == np.uint8
  assert tuple(grid[7, 5]) == visualize.SEPARATOR_RGB
  assert tuple(grid[2, 2]) == (255, 255, 255)  # given, present
  assert tuple(grid[2, 8]) == visualize.MISSING_RGB  # given, missing: diagonal
  assert tuple(grid[10, 2]) == (0, 0, 0)  # generated
  assert subsets.subset_names(("frontal", "lateral", "text")) == SUBSETS
