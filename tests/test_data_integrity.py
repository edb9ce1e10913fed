"""A damaged prepared dataset fails at load time, naming the file and how to rebuild it."""

import os
import shutil

from conftest import tiny_config
import pytest

from input_pipeline import integrity, tfds_source

SHARD = "synthetic_cxr-{split}.tfrecord-00000-of-00001"


@pytest.fixture
def damaged_copy(synthetic_tiny_dir, tmp_path):
  """A copy of the prepared tiny dataset: (data_dir, the dataset's directory)."""
  shutil.copytree(os.path.join(synthetic_tiny_dir, "synthetic_cxr"), tmp_path / "synthetic_cxr")
  return str(tmp_path), str(tmp_path / "synthetic_cxr" / "tiny" / "1.0.0")


def _load_fails(data_dir, dataset_dir, path, what):
  """Loading raises one error that names ``path``, says ``what`` and how to rebuild."""
  with pytest.raises(integrity.DatasetFileError) as error:
    tfds_source.load(tiny_config(data_dir).data)
  message = str(error.value)
  assert message.startswith("Dataset synthetic_cxr/tiny"), message
  assert path in message and what in message, message
  assert f"rm -r '{dataset_dir}') and rerun the same command" in message, message


def test_a_truncated_shard_is_named(damaged_copy):
  data_dir, dataset_dir = damaged_copy
  path = os.path.join(dataset_dir, SHARD.format(split="train"))
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 1000)
  _load_fails(data_dir, dataset_dir, path, "truncated")


def test_a_shard_with_garbage_is_named(damaged_copy):
  data_dir, dataset_dir = damaged_copy
  path = os.path.join(dataset_dir, SHARD.format(split="test"))
  with open(path, "r+b") as f:
    f.write(b"\x00garbage\xff" * 8)  # same size, first record overwritten
  _load_fails(data_dir, dataset_dir, path, "cannot be read (corrupted record at 0")


def test_a_missing_shard_is_named(damaged_copy):
  data_dir, dataset_dir = damaged_copy
  path = os.path.join(dataset_dir, SHARD.format(split="validation"))
  os.remove(path)
  _load_fails(data_dir, dataset_dir, path, "lacks the file(s)")


def test_a_garbage_dataset_info_is_named(damaged_copy):
  data_dir, dataset_dir = damaged_copy
  path = os.path.join(dataset_dir, "dataset_info.json")
  with open(path, "w") as f:
    f.write('{"name": "synthetic_cxr", garbage')
  _load_fails(data_dir, dataset_dir, path, "is not valid JSON")


def test_the_mimic_hint_is_the_readme_command():
  hint = integrity.rebuild_hint(
    "mimic_cxr/all_studies", "/d/mimic_cxr/all_studies/1.0.0", "/data/tfds"
  )
  assert (
    "python -m input_pipeline.mimic_cxr --config=all_studies "
    "--manual_dir=/path/to/mimic-cxr-jpg/2.0.0 --data_dir=/data/tfds"
  ) in hint
