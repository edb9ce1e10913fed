"""The modality registry is the one place: the model, batches, inference and docs follow it;
the old flat module paths still import, naming their new home."""

import importlib
import pathlib
import subprocess
import sys
import textwrap

import pytest

from input_pipeline import batching, features
from mopoe_jax import inference
from mopoe_jax.data import modalities
from mopoe_jax.vae import model as model_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_everything_follows_the_registry():
  names = tuple(m.name for m in modalities.REGISTRY)
  assert modalities.MODALITIES == names == ("frontal", "lateral", "text")
  assert modalities.IMAGE_MODALITIES == ("frontal", "lateral")
  assert model_lib.DATA_MODALITIES == names
  assert batching.BATCH_KEYS[: len(names)] == names
  assert batching.IMAGE_KEYS == modalities.IMAGE_MODALITIES
  assert inference.IMAGE_MODALITIES == modalities.IMAGE_MODALITIES
  layout = features.study_features(16, 8)
  for m in modalities.REGISTRY:
    assert (layout[m.name].shape == (8,)) == m.is_text, m.name
  assert layout["available"].shape == (len(names),)
  assert [k for k, *_ in modalities.batch_layout()][: len(names) + 1] == [*names, "available"]


def test_unknown_modality_and_kind_are_errors():
  with pytest.raises(ValueError, match="Unknown modality 'sagittal'.*frontal"):
    modalities.is_text("sagittal")
  with pytest.raises(ValueError, match="kind must be one of"):
    modalities.Modality("x", "audio", "", ("x",), (".wav",))


def test_docs_batch_layout_is_the_registrys():
  text = (REPO / "docs" / "architecture.md").read_text()
  assert modalities.batch_layout_markdown() in text


def test_inference_reads_the_registrys_files(tmp_path):
  study = tmp_path / "s1"
  study.mkdir()
  (study / "REPORT.TXT").write_text("FINDINGS: heart size is normal.")
  read = inference.read_study(str(study), 16)
  assert read.present == ("text",) and read.get("text") == read.report
  (tmp_path / "empty").mkdir()
  with pytest.raises(
    inference.StudyError, match="frontal.png/.jpg, lateral.png/.jpg or report.txt/.xml"
  ):
    inference.read_study(str(tmp_path / "empty"), 16)


def test_old_module_paths_import_with_a_warning_naming_the_new_one():
  script = textwrap.dedent("""
      import warnings
      warnings.simplefilter("error")
      try:
        import mopoe_jax.train
      except FutureWarning as e:
        print("warned:", e)
      warnings.simplefilter("ignore")
      import mopoe_jax.train, mopoe_jax.training.loop
      assert mopoe_jax.train is mopoe_jax.training.loop
      from mopoe_jax import model, evaluate
      assert model.create_model is __import__("mopoe_jax.vae.model").vae.model.create_model
      from mopoe_jax.evaluators import EVALUATORS, probes
      import mopoe_jax.evaluation.probes as new_probes
      assert probes is new_probes and "probes" in EVALUATORS
      try:
        import mopoe_jax.tpu_cost
      except ModuleNotFoundError as e:
        print("left:", e)
  """)
  out = subprocess.run(
    [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "warned: mopoe_jax.train moved to mopoe_jax.training.loop" in out.stdout
  assert "left: mopoe_jax.tpu_cost left the library: it is benchmarks/costing/tpu_cost.py" in (
    out.stdout
  )


def test_every_moved_module_resolves():
  from mopoe_jax import _moved

  for new in _moved.MOVED.values():
    importlib.import_module(new)
