"""Using a trained model from its workdir alone (mopoe_jax.inference, main.py --mode=generate).

Reading a user's files is tested on hand-made files; the model on the session's straight run
(`straight_run`, whose training wrote its model.json); the README's example and the command
run in subprocesses where TensorFlow cannot be imported. That the files are read as the MIMIC
builder stores them: tests/test_mimic_cxr.py.
"""

import json
import os
import re
import subprocess
import sys

from conftest import REPO, load_data, subprocess_env
import jax
import numpy as np
from PIL import Image
import pytest

from mopoe_jax import inference
from mopoe_jax.data import images, text, visualize
from mopoe_jax.evaluation import generation
from mopoe_jax.training import model_file
from mopoe_jax.vae.latents import posteriors

# A sitecustomize that makes these packages unimportable (as where they are not installed).
NO_TENSORFLOW = """
import sys
for _name in ("tensorflow", "tensorflow_datasets", "clu", "input_pipeline"):
  sys.modules[_name] = None
"""


def _no_tensorflow_env(tmp_path) -> dict:
  site = tmp_path / "site"
  site.mkdir(exist_ok=True)
  (site / "sitecustomize.py").write_text(NO_TENSORFLOW)
  return subprocess_env(PYTHONPATH=str(site))


def _png(path, array, mode=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array, mode).save(path)


# ------------------------------------------------------------------------------------------------
# Reading files.


def test_images_of_any_depth_and_mode_become_the_same_grayscale(tmp_path):
  rng = np.random.default_rng(0)
  gray = rng.integers(0, 256, (40, 60), dtype=np.uint8)
  _png(tmp_path / "gray.png", gray)
  _png(tmp_path / "rgb.png", np.repeat(gray[..., None], 3, axis=-1))
  _png(
    tmp_path / "rgba.png",
    np.concatenate([np.repeat(gray[..., None], 3, -1), np.full((40, 60, 1), 7, np.uint8)], -1),
  )
  _png(tmp_path / "g16.png", gray.astype(np.uint16) * 257)  # the same values in 16 bits
  Image.fromarray(gray).convert("P").save(tmp_path / "palette.png")
  expected = images.load_image(tmp_path / "gray.png", 16)
  assert expected.shape == (16, 16, 1) and expected.dtype == np.uint8
  # Centre crop then resize: the middle 40 x 40 columns of the source.
  direct = np.asarray(Image.fromarray(gray[:, 10:50]).resize((16, 16), Image.Resampling.LANCZOS))
  np.testing.assert_array_equal(expected[..., 0], direct)
  for name in ("rgb", "rgba", "g16", "palette"):
    np.testing.assert_array_equal(
      inference.read_image(str(tmp_path / f"{name}.png"), 16), expected, err_msg=name
    )


def test_bad_images_name_the_file_and_the_reason(tmp_path, monkeypatch):
  (tmp_path / "text.png").write_text("not an image")
  with pytest.raises(
    inference.StudyError,
    match=r"text\.png: not a readable image "
    r"\(UnidentifiedImageError: cannot identify image file\)",
  ):
    inference.read_image(str(tmp_path / "text.png"), 16)
  with pytest.raises(inference.StudyError, match=r"absent\.png: no such file"):
    inference.read_image(str(tmp_path / "absent.png"), 16)
  _png(tmp_path / "big.png", np.zeros((30, 40), np.uint8))
  monkeypatch.setattr(images, "MAX_PIXELS", 1000)
  with pytest.raises(
    inference.StudyError,
    match=r"big\.png: too large to decode safely: 40 x "
    r"30 pixels is more than the 1,000",
  ):
    inference.read_image(str(tmp_path / "big.png"), 16)


def test_reports_are_read_as_the_builders_read_them(tmp_path):
  def report(content, name="r.txt"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)

  assert (
    inference.read_report(report("FINAL REPORT\nFINDINGS: Heart  NORMAL.\nIMPRESSION: ok"))
    == "heart normal."
  )
  assert inference.read_report(report("INDICATION: x\nIMPRESSION: Clear lungs.")) == (
    "clear lungs."
  )
  assert inference.read_report(report("  Lungs are clear.\n\nNo effusion. ")) == (
    "lungs are clear. no effusion."
  )
  with pytest.raises(inference.StudyError, match=r"r\.txt: no report words \(it is empty\)"):
    inference.read_report(report(" \n\t"))
  with pytest.raises(inference.StudyError, match="has sections but no FINDINGS"):
    inference.read_report(report("INDICATION: cough\nCOMPARISON: none"))
  with pytest.raises(inference.StudyError, match=r"a binary file, not a plain-text report"):
    inference.read_report(report(b"PNG\x00\x01"))
  with pytest.raises(inference.StudyError, match="not UTF-8 text"):
    inference.read_report(report(b"lungs \xff\xfe clear"))


def test_study_folders_any_subset_and_every_problem_named(tmp_path):
  rng = np.random.default_rng(1)
  _png(tmp_path / "b_frontal_only" / "FRONTAL.PNG", rng.integers(0, 256, (20, 20), np.uint8))
  (tmp_path / "a_report_only").mkdir()
  (tmp_path / "a_report_only" / "report.txt").write_text("no effusion.")
  (tmp_path / "c_nothing").mkdir()
  (tmp_path / "c_nothing" / "notes.md").write_text("x")
  _png(tmp_path / "d_two_frontals" / "frontal.png", np.zeros((8, 8), np.uint8))
  _png(tmp_path / "d_two_frontals" / "frontal.jpg", np.zeros((8, 8), np.uint8))
  (tmp_path / "loose_file.txt").write_text("not a study")
  studies, failures = inference.read_studies(str(tmp_path), 16)
  assert [s.name for s in studies] == ["a_report_only", "b_frontal_only"]
  assert studies[0].present == ("text",) and studies[1].present == ("frontal",)
  assert studies[1].frontal.shape == (16, 16, 1)
  assert [name for name, _ in failures] == ["c_nothing", "d_two_frontals"]
  assert "no modality: expected frontal.png" in failures[0][1]
  assert "more than one frontal file (frontal.jpg, frontal.png)" in failures[1][1]
  with pytest.raises(ValueError, match="has no study folders"):
    inference.read_studies(str(tmp_path / "c_nothing"), 16)


def test_an_output_folder_with_files_is_refused(tmp_path):
  inference.check_output_folder(str(tmp_path / "new"))
  inference.check_output_folder(str(tmp_path))  # empty
  (tmp_path / "x").write_text("")
  with pytest.raises(FileExistsError, match="exists and is not an empty folder"):
    inference.check_output_folder(str(tmp_path))


def test_model_file_explains_what_is_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"model\.json does not exist.*--mode=evaluate"):
    model_file.read(str(tmp_path))
  (tmp_path / "model.json").write_text("{")
  with pytest.raises(ValueError, match=r"model\.json cannot be read"):
    model_file.read(str(tmp_path))


# ------------------------------------------------------------------------------------------------
# The model of a trained workdir.


@pytest.fixture(scope="module")
def trained(straight_run):
  config, workdir, _ = straight_run
  return config, workdir, inference.TrainedModel.load(workdir, batch_size=8)


@pytest.fixture(scope="module")
def studies(trained):
  """Ten test studies of the tiny dataset as a user would give them: some with a missing
  lateral view or report, one with only a frontal view, one with only a report."""
  config, _, model = trained
  batch = next(load_data(config).eval_batches("test", batch_size=10))
  out = []
  for i in range(10):
    has = batch["available"][i].copy()
    if i == 0:
      has[:] = [True, False, False]
    if i == 1:
      has[:] = [False, False, True]
    out.append(
      inference.Study(
        name=f"study{i}",
        frontal=batch["frontal"][i] if has[0] else None,
        lateral=batch["lateral"][i] if has[1] else None,
        report=model.vocabulary.decode(batch["text"][i]) if has[2] else None,
      )
    )
  assert out[0].present == ("frontal",) and out[1].present == ("text",)
  return out


def test_the_workdir_holds_config_vocabulary_and_preprocessing(trained):
  config, workdir, model = trained
  with open(os.path.join(workdir, "model.json")) as f:
    content = json.load(f)
  assert content["config"]["model"]["latent_dim"] == config.model.latent_dim
  assert content["image_size"] == config.data.image_size == model.image_size
  assert content["vocabulary"] == load_data(config).vocab.words == model.vocabulary.words
  assert set(content["preprocessing"]) == {"images", "reports"}
  assert model.step == 30 and model.subset_names[-1] == "frontal+lateral+text"


def test_generation_from_a_subset_equals_the_evaluators(trained, studies):
  """The posterior mean of 'frontal' for every study that has one, decoded by
  mopoe_jax.inference and by the evaluators' generation (same inputs)."""
  _, _, model = trained
  with_frontal = [s for s in studies if s.frontal is not None]
  ours = model.generate(with_frontal, given="frontal", latent="mean")
  batch = model.batch(with_frontal)
  batch["available"][:, 1:] = False  # the subset's modalities only
  mu_k, logvar_k, _ = posteriors(model.model, model.variables, batch)
  k = model.subset_names.index("frontal")
  [(rows, theirs)] = list(
    generation.generate_from_posteriors(
      model.model,
      model.variables,
      np.asarray(mu_k)[[k]],
      np.asarray(logvar_k)[[k]],
      jax.random.key(0),
      batch_size=len(with_frontal),
      latent="mean",
    )
  )
  assert rows == slice(0, len(with_frontal))
  for i, out in enumerate(ours):
    assert out["given"] == "frontal"
    for m in ("frontal", "lateral"):
      np.testing.assert_array_equal(out[m][0], visualize.to_uint8(theirs[m][0, i])[..., 0])
    assert out["text"] == [model.vocabulary.decode(theirs["text"][0, i])]


def test_encode_is_batch_size_free_and_follows_each_studys_modalities(trained, studies):
  config, workdir, model = trained
  encoded = model.encode(studies)
  assert encoded["mu"].shape == (10, config.model.latent_dim)
  assert encoded["subset"][:2] == ["frontal", "text"]
  assert np.isfinite(encoded["mu"]).all() and np.isfinite(encoded["logvar"]).all()
  other = inference.TrainedModel(
    model.model, model.variables, model.config, model.vocabulary, model.step, workdir, batch_size=3
  )
  again = other.encode(studies)
  # Batches of 3 and of 64 are different XLA programs whose sums may round differently (seen:
  # up to 3e-5 relative with jax 0.12 on Python 3.13); another study's data would differ by O(1).
  np.testing.assert_allclose(again["mu"], encoded["mu"], rtol=1e-4, atol=1e-5)
  assert model.encode([])["mu"].shape == (0, config.model.latent_dim)
  assert not model.generate([])
  # A subset posterior that a study cannot give is refused, naming study and modality.
  with pytest.raises(
    inference.StudyError, match="study study0 has no text for the subset frontal\\+text"
  ):
    model.encode(studies[:1], subset="frontal+text")
  # The text-only study's posterior is the report's: the same as that of a study that has
  # only this report.
  alone = model.encode([inference.Study("x", report=studies[1].report)])
  np.testing.assert_allclose(alone["mu"][0], encoded["mu"][1], rtol=1e-5, atol=1e-6)


def test_samples_are_fixed_by_the_seed(trained, studies):
  _, _, model = trained
  a = model.generate(studies[:4], targets=["frontal", "text"], num_samples=2, seed=3)
  b = model.generate(studies[:4], targets=["frontal", "text"], num_samples=2, seed=3)
  c = model.generate(studies[:4], targets=["frontal", "text"], num_samples=2, seed=4)
  for x, y, z in zip(a, b, c):
    assert set(x) == {"given", "frontal", "text"}
    assert x["frontal"].shape == (2, model.image_size, model.image_size)
    assert x["frontal"].dtype == np.uint8 and len(x["text"]) == 2
    np.testing.assert_array_equal(x["frontal"], y["frontal"])
    assert x["text"] == y["text"]
    assert not np.array_equal(x["frontal"], z["frontal"])
  recon = model.reconstruct(studies[:2])
  assert set(recon[0]) == {"given", "frontal"} and set(recon[1]) == {"given", "text"}


def _readme_example() -> str:
  with open(os.path.join(REPO, "README.md")) as f:
    readme = f.read()
  match = re.search(r"<!-- test: inference-example -->\n```python\n(.*?)```", readme, re.S)
  assert match, "README.md has no Python block tagged 'test: inference-example'"
  return match.group(1)


def _write_studies(root, image_size):
  """A full study, one with only a report, one with only a frontal view (PNG and text), a
  large 16-bit lateral, and a study whose image is not one."""
  rng = np.random.default_rng(5)
  full = root / "full"
  _png(full / "frontal.png", rng.integers(0, 256, (3 * image_size, 2 * image_size), np.uint8))
  _png(full / "lateral.png", (rng.integers(0, 65536, (90, 70))).astype(np.uint16))
  (full / "report.txt").write_text("FINDINGS: The lungs are clear. No pleural effusion.")
  (root / "report_only").mkdir()
  (root / "report_only" / "report.txt").write_text("Heart size is normal.")
  _png(root / "frontal_only" / "frontal.png", rng.integers(0, 256, (50, 50), np.uint8))


@pytest.mark.timeout(600)
def test_the_readme_example_runs_where_tensorflow_cannot_be_imported(trained, tmp_path):
  config, workdir, _ = trained
  (tmp_path / "runs").mkdir()
  os.symlink(workdir, tmp_path / "runs" / "synthetic")
  _write_studies(tmp_path / "my_studies", config.data.image_size)
  proc = subprocess.run(
    [sys.executable, "-c", _readme_example()],
    cwd=tmp_path,
    env=_no_tensorflow_env(tmp_path),
    capture_output=True,
    text=True,
    timeout=550,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  lines = proc.stdout.strip().splitlines()
  assert [line.split()[:2] for line in lines] == [
    ["frontal_only", "frontal"],
    ["full", "frontal+lateral+text"],
    ["report_only", "text"],
  ], proc.stdout


@pytest.mark.timeout(600)
def test_the_command_writes_every_readable_study_and_names_the_bad_one(trained, tmp_path):
  config, workdir, _ = trained
  studies_dir, out = tmp_path / "studies", tmp_path / "out"
  _write_studies(studies_dir, config.data.image_size)
  (studies_dir / "broken").mkdir()
  (studies_dir / "broken" / "frontal.png").write_text("garbage")
  command = [
    sys.executable,
    os.path.join(REPO, "main.py"),
    f"--workdir={workdir}",
    "--mode=generate",
    f"--input={studies_dir}",
    f"--output={out}",
    "--samples=2",
  ]
  env = _no_tensorflow_env(tmp_path)
  proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=550)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert re.search(
    r"Wrote 3 studies to \S+ \(step 30\): 12 generated images, 6 generated "
    r"reports, 3 latents; skipped 1\n  broken: \S+broken/frontal\.png: not a "
    r"readable image",
    proc.stderr,
  ), proc.stderr[-3000:]
  assert sorted(os.listdir(out)) == ["frontal_only", "full", "latents.npz", "report_only"]
  assert sorted(os.listdir(out / "full")) == [
    "generated_frontal_0.png",
    "generated_frontal_1.png",
    "generated_lateral_0.png",
    "generated_lateral_1.png",
    "generated_report.txt",
    "latents.npz",
    "side_by_side.png",
  ]
  image = np.asarray(Image.open(out / "full" / "generated_lateral_1.png"))
  assert image.shape == (config.data.image_size,) * 2 and image.dtype == np.uint8
  reports = (out / "report_only" / "generated_report.txt").read_text().splitlines()
  assert reports[0] == "given: text" and reports[1].startswith("sample 0: ")
  words = set(text.Vocabulary(model_file.read(workdir)[1]).words)
  assert set(reports[1].split(": ", 1)[1].split()) <= words
  latents = np.load(out / "latents.npz")
  assert list(latents["names"]) == ["frontal_only", "full", "report_only"]
  assert latents["mu"].shape == (3, config.model.latent_dim)
  # The same command again: the output folder is not empty; nothing is overwritten.
  again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=550)
  assert again.returncode == 2 and "exists and is not an empty folder" in again.stderr


def test_the_throughput_benchmark_prints_both_operations(trained, capsys):
  sys.path.insert(0, REPO)
  from benchmarks import inference_throughput  # pylint: disable=g-import-not-at-top

  _, workdir, _ = trained
  inference_throughput.main(
    ["--workdir", workdir, "--batch", "8", "--studies", "12", "--repeats", "1"]
  )
  out = capsys.readouterr().out
  assert "(step 30, image 32 px" in out and "batch 8, 12 studies" in out
  for name in ("encode", "generate"):
    assert re.search(rf"^{name} +[0-9.]+ studies/s", out, re.M), out
