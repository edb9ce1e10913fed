"""Evaluators as plug-ins: the registry, each evaluator's config section and its checks, the
retired flat fields of config.eval. No data and no trained model: an evaluator registered here
runs through `evaluate.evaluate` with the restore stubbed out."""

import dataclasses
import json
import os
import subprocess
import sys
import types

from conftest import REPO, RecordingWriter, subprocess_env, tiny_config
import ml_collections
import pytest

from configs import default
from mopoe_jax.evaluation import evaluate, registry, retired
from mopoe_jax.evaluation.common import Evaluator, Result
from mopoe_jax.training import model_file, restore
from mopoe_jax.vae import model as model_lib


@dataclasses.dataclass
class CountResult(Result):
  subsets: list
  answer: int
  twice: float


class CountSubsets(Evaluator):
  """A plug-in that reads its own section and the context, and reports one number."""

  name = "count_subsets"

  def default_config(self):
    c = ml_collections.ConfigDict()
    c.answer = 42
    return c

  def check(self, config):
    if config.eval.count_subsets.answer < 0:
      raise ValueError("config.eval.count_subsets.answer must be >= 0.")

  def run(self, ctx):
    with open(os.path.join(ctx.eval_dir, "count.txt"), "w") as f:
      f.write(str(len(ctx.subset_names)))
    answer = ctx.config.eval.count_subsets.answer
    return CountResult(subsets=ctx.subset_names, answer=answer, twice=2.0 * answer)

  def summary_scalars(self, result):
    return {"eval_count/subsets": len(result.subsets), "eval_count/none": None}

  def markdown(self, result, settings):
    return f"## Counted\n\n{len(result.subsets)} subsets of {settings['dataset']}.\n"


@pytest.fixture
def plugged(monkeypatch):
  """The registry with `CountSubsets` registered (restored afterwards)."""
  monkeypatch.setattr(registry, "EVALUATORS", dict(registry.EVALUATORS))
  registry.register(CountSubsets())
  return registry.EVALUATORS


def test_a_registered_evaluator_runs_through_evaluate_without_touching_it(
  plugged, monkeypatch, tmp_path
):
  config = tiny_config("/nowhere")
  config.eval.evaluators = ("count_subsets",)  # no section in the config: its defaults
  model = model_lib.create_model(config, vocab_size=40)
  monkeypatch.setattr(restore, "restore_model", lambda *a, **k: (7, model, {}))
  monkeypatch.setattr(model_file, "write", lambda *a, **k: None)
  checks = []
  check = evaluate.check_eval_config
  monkeypatch.setattr(evaluate, "check_eval_config", lambda c: checks.append(1) or check(c))
  vocab = type("Vocab", (), {"words": ["w"] * 40, "__len__": lambda self: 40})()
  data = types.SimpleNamespace(name="fake/1.0.0", vocab=vocab)
  writer = RecordingWriter()

  results = evaluate.evaluate(config, str(tmp_path), data, writer)

  assert len(checks) == 1  # once per evaluation (it used to run in evaluate and again below)
  expected = {"subsets": results["settings"]["subsets"], "answer": 42, "twice": 84.0}
  assert len(expected["subsets"]) == 7 and results["count_subsets"] == expected
  eval_dir = tmp_path / "eval"
  on_disk = json.loads((eval_dir / "results.json").read_text())
  assert on_disk["count_subsets"] == expected and on_disk["settings"]["step"] == 7
  assert on_disk["settings"]["eval"]["count_subsets"] == {"answer": 42}
  assert (eval_dir / "count.txt").read_text() == "7"
  report = (eval_dir / "report.md").read_text()
  assert report.startswith("# Evaluation of MoPoE on fake/1.0.0 (test split, step 7)\n")
  assert "## Counted\n\n7 subsets of fake/1.0.0.\n" in report
  assert writer.scalars == {"eval_count/subsets": 7.0} and writer.flushed
  assert "count_subsets" not in config.eval  # the defaults went to a copy

  # Its section and its own check, through the generic check.
  config.eval.count_subsets = ml_collections.ConfigDict({"answer": -1})
  with pytest.raises(ValueError, match=r"eval\.count_subsets\.answer must be >= 0"):
    evaluate.check_eval_config(config)
  config.eval.count_subsets = ml_collections.ConfigDict({"answer": 1, "answr": 2})
  with pytest.raises(ValueError, match=r"config\.eval\.count_subsets has no field answr"):
    evaluate.check_eval_config(config)


def test_report_sections_follow_the_registry_and_scalars_keep_their_names(plugged):
  assert list(plugged)[:4] == ["probes", "coherence", "likelihood", "generation"]
  with pytest.raises(ValueError, match="registered already"):
    registry.register(CountSubsets())
  with pytest.raises(ValueError, match="other than"):
    registry.register(type("Bad", (CountSubsets,), {"name": "seed"})())
  outcomes = {
    "count_subsets": CountResult(subsets=["a"], answer=1, twice=2.0),
    "likelihood": types.SimpleNamespace(
      subsets={"a": {"x": {"log_px": -3.0, "elbo": -4.0}, "y": None}},
      num_samples=2,
      num_examples=3,
      units="nats",
    ),
  }
  settings = {"dataset": "d", "test_split": "test", "step": 0, "modalities": ["x", "y"]}
  report = evaluate.report_markdown(outcomes, settings)
  assert report.index("## Likelihood") < report.index("## Counted")
  assert "| a | -3.0 / -4.0 | n/a | n/a |" in report
  assert evaluate.summary_scalars(outcomes) == {
    "eval_count/subsets": 1.0,
    "eval_log_px/a/x": -3.0,
    "eval_elbo/a/x": -4.0,
  }


def test_each_evaluators_defaults_are_the_paper_configs_section():
  config = default.get_config()
  for name, evaluator in registry.EVALUATORS.items():
    assert config.eval[name].to_dict() == evaluator.default_config().to_dict(), name
  assert set(config.eval) == set(registry.SHARED_FIELDS) | set(registry.EVALUATORS)
  evaluate.check_eval_config(config)


@pytest.mark.parametrize(
  "field, value, new",
  [
    ("probe_repeats", 5, r"eval\.probes\.repeats"),
    ("probe_train_examples", 5, r"eval\.probes\.train_examples"),
    ("generation_latent", "mean", r"eval\.generation\.latent and eval\.coherence\.latent"),
    ("attribute_coherence", False, r"eval\.coherence\.attributes"),
    ("likelihood_batch_size", 4, r"eval\.likelihood\.batch_size"),
  ],
)
def test_an_old_flat_field_fails_naming_its_new_place(field, value, new):
  config = tiny_config("/nowhere")  # a config file that still sets the old field
  config.eval[field] = value
  with pytest.raises(ValueError, match=rf"config\.eval\.{field} is no longer a field.*{new}"):
    evaluate.check_eval_config(config)
  with pytest.raises(ValueError, match=rf"--config\.eval\.{field}: .*{new}"):
    retired.check_overrides(["--workdir=w", f"--config.eval.{field}={value}"])
  with pytest.raises(ValueError, match=new):
    retired.check_overrides([f"--config.eval.{field}", str(value)])


def test_unknown_eval_fields_and_values_are_refused():
  config = tiny_config("/nowhere")
  retired.check_overrides(["--config.eval.probes.repeats=5", "--config.eval.seed=1"])
  config.eval.probes.repeats = 0
  with pytest.raises(ValueError, match=r"config\.eval\.probes\.repeats must be >= 1, got 0"):
    evaluate.check_eval_config(config)
  config = tiny_config("/nowhere")
  config.eval.coherence.latent = "median"
  with pytest.raises(ValueError, match=r"config\.eval\.coherence\.latent must be one of"):
    evaluate.check_eval_config(config)
  config = tiny_config("/nowhere")
  config.eval.probe_seeds = 3  # never a field
  with pytest.raises(ValueError, match=r"config\.eval\.probe_seeds is not a field.*eval\.probes"):
    evaluate.check_eval_config(config)
  config = tiny_config("/nowhere")
  config.eval.evaluators = ("probes", "fid")
  with pytest.raises(ValueError, match=r"unknown entries \['fid'\]"):
    evaluate.check_eval_config(config)
  # A config without an evaluator's section (written before it existed) runs with its defaults.
  config = tiny_config("/nowhere")
  with config.eval.unlocked():
    del config.eval["likelihood"]
  evaluate.check_eval_config(config)
  assert registry.with_defaults(config).eval.likelihood.samples == 64


@pytest.mark.slow
def test_main_names_the_new_field_of_an_old_override(tmp_path):
  """main.py refuses --config.eval.probe_repeats before ml_collections' bare KeyError."""
  out = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "main.py"),
      "--config=" + os.path.join(REPO, "configs", "tiny.py"),
      f"--workdir={tmp_path}",
      "--config.eval.probe_repeats=5",
    ],
    env=subprocess_env(),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode != 0
  assert "--config.eval.probe_repeats: " in out.stderr and "eval.probes.repeats" in out.stderr
  assert "Traceback" not in out.stderr
