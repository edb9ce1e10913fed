"""Tests of input_pipeline/batching.py against a tiny builder defined here (FakeCxr).

Each FakeCxr study carries its id in `finding` and in the pixels of its images, so the tests can
tell exactly which studies a batch holds and that the images were decoded for the right rows.
"""

import itertools
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline import batching, builders, features
from mopoe_jax.data import text
from mopoe_jax.platform import sharding

IMAGE_SIZE, TEXT_LENGTH = 8, 6
NUM_TRAIN, NUM_TEST = 40, 13
TEST_ID_OFFSET = 1000
VOCAB = list(text.SPECIAL_TOKENS) + ["heart", "lungs", "clear", "normal"]


def _is_complete(study_id: int) -> bool:
  return study_id % 4 != 3  # every 4th study lacks its lateral view


COMPLETE_TRAIN = [i for i in range(NUM_TRAIN) if _is_complete(i)]  # 30 studies


class FakeCxr(tfds.core.GeneratorBasedBuilder):
  """A few tiny studies with the layout of input_pipeline.features."""

  VERSION = tfds.core.Version("1.0.0")
  # tfds looks for the builder's files (README, checksums) in its package; a test is no package.
  pkg_dir_path = pathlib.Path(__file__).parent

  def _info(self):
    return self.dataset_info_from_configs(
      features=features.study_features(IMAGE_SIZE, TEXT_LENGTH),
      metadata=tfds.core.MetadataDict(vocabulary=VOCAB),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {
      "train": self._generate_examples(0, NUM_TRAIN),
      "test": self._generate_examples(TEST_ID_OFFSET, NUM_TEST),
    }

  def _generate_examples(self, offset, count):
    rng = np.random.default_rng(offset)
    for i in range(offset, offset + count):
      complete = _is_complete(i)
      labels = rng.choice([1.0, 0.0, -1.0, np.nan], size=len(features.LABELS)).astype(np.float32)
      yield (
        str(i),
        {
          "frontal": np.full((IMAGE_SIZE, IMAGE_SIZE, 1), i % 256, np.uint8),
          "lateral": np.full((IMAGE_SIZE, IMAGE_SIZE, 1), (i % 256) if complete else 0, np.uint8),
          "text": np.array([3, 4, text.EOS_ID] + [text.PAD_ID] * (TEXT_LENGTH - 3), np.int32),
          "report": "heart lungs",
          "available": np.array([True, complete, True]),
          "labels": labels,
          "finding": np.int32(i),
          "study_id": f"s{i}",
        },
      )


def _config(data_dir, **overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(
    {
      "name": "fake_cxr",
      "data_dir": str(data_dir),
      "manual_dir": None,
      "require_complete": False,
      "train_split": "train",
      "shuffle_buffer_size": 64,
      "prefetch": 2,
    }
  )
  config.update(overrides)
  return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def builder(data_dir):
  return batching.get_builder(_config(data_dir))


def _ids(batch) -> list[int]:
  return batch["finding"].tolist()


def _take(iterator, n):
  return list(itertools.islice(iterator, n))


def _train(builder, data_dir, n, **kwargs):
  config = _config(data_dir, require_complete=kwargs.pop("require_complete", False))
  return _take(batching.train_iterator(builder, config, **kwargs), n)


def _eval_ids(builder, config, split, **kwargs):
  """Ids of the valid rows of one eval pass, and the number of batches."""
  batches = list(batching.eval_iterator(builder, config, split, **kwargs))
  ids = [i for b in batches for i, v in zip(_ids(b), b["valid"]) if v]
  return ids, batches


def test_get_builder_prepares_once_and_loads_vocabulary(builder, data_dir):
  assert builder.is_prepared()
  assert batching.num_examples(builder, "train") == NUM_TRAIN
  assert batching.num_examples(builder, "test") == NUM_TEST
  assert batching.num_examples(builder, "train", require_complete=True) == len(COMPLETE_TRAIN)
  assert batching.load_vocabulary(builder) == text.Vocabulary(VOCAB)
  again = batching.get_builder(_config(data_dir))  # already prepared: only loads
  assert again.info.splits["train"].num_examples == NUM_TRAIN


def test_builders_are_found_by_their_folders():
  assert builders.families() == {
    name: f"input_pipeline.{name}" for name in ("iu_xray", "mimic_cxr", "synthetic_cxr")
  }
  assert builders.family_of("mimic_cxr/paper:1.0.0") == "mimic_cxr"


def test_get_builder_names_the_builders_for_an_unknown_dataset(data_dir):
  with pytest.raises(ValueError, match=r"absent_cxr/small.*\['iu_xray', 'mimic_cxr'"):
    batching.get_builder(_config(data_dir, name="absent_cxr/small"))


def test_train_batch_keys_shapes_and_dtypes(builder, data_dir):
  (batch,) = _train(builder, data_dir, 1, global_batch_size=8, seed=0)
  assert sorted(batch) == sorted(batching.BATCH_KEYS)
  expected = {
    "frontal": ((8, IMAGE_SIZE, IMAGE_SIZE, 1), np.uint8),
    "lateral": ((8, IMAGE_SIZE, IMAGE_SIZE, 1), np.uint8),
    "text": ((8, TEXT_LENGTH), np.int32),
    "available": ((8, 3), np.bool_),
    "labels": ((8, len(features.LABELS)), np.float32),
    "finding": ((8,), np.int32),
  }
  for key, (shape, dtype) in expected.items():
    assert batch[key].shape == shape, key
    assert batch[key].dtype == dtype, key
  # The images decoded belong to the rows' studies.
  np.testing.assert_array_equal(batch["frontal"][:, 0, 0, 0], batch["finding"] % 256)


def test_train_epochs_are_permutations_and_seeds_matter(builder, data_dir):
  batches = _train(builder, data_dir, 10, global_batch_size=8, seed=1)  # 2 epochs of 5 steps
  epochs = [sorted(i for b in batches[e * 5 : (e + 1) * 5] for i in _ids(b)) for e in range(2)]
  assert epochs[0] == epochs[1] == list(range(NUM_TRAIN))
  order = [_ids(b) for b in batches]
  assert order[:5] != order[5:], "each epoch must be shuffled anew"
  again = _train(builder, data_dir, 10, global_batch_size=8, seed=1)
  for a, b in zip(batches, again):
    for key in batching.BATCH_KEYS:
      np.testing.assert_array_equal(a[key], b[key])
  other = _train(builder, data_dir, 10, global_batch_size=8, seed=2)
  assert [_ids(b) for b in other] != order


@pytest.mark.parametrize("require_complete", [False, True])
def test_resume_matches_fresh_iterator(builder, data_dir, require_complete):
  # 40 studies / batch 8: 5 steps per epoch; 30 complete studies: 3 steps (6 dropped per epoch).
  kwargs = dict(global_batch_size=8, seed=3, require_complete=require_complete)
  fresh = _train(builder, data_dir, 12, **kwargs)
  for start_step in (1, 3, 5, 7, 11):
    resumed = _train(builder, data_dir, 12 - start_step, start_step=start_step, **kwargs)
    for step, (a, b) in enumerate(zip(fresh[start_step:], resumed), start=start_step):
      for key in batching.BATCH_KEYS:
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"step {step}, key {key}")


def test_resume_far_into_training_reads_at_most_one_epoch(builder, data_dir):
  # A scheme that skips k batches by reading them would take minutes here (5 million epochs).
  epoch_start = 5 * 10**6 * 5  # 5 steps per epoch
  start = time.perf_counter()
  at_epoch = _train(builder, data_dir, 3, global_batch_size=8, seed=4, start_step=epoch_start)
  (resumed,) = _train(builder, data_dir, 1, global_batch_size=8, seed=4, start_step=epoch_start + 2)
  assert time.perf_counter() - start < 30
  np.testing.assert_array_equal(at_epoch[2]["finding"], resumed["finding"])
  np.testing.assert_array_equal(at_epoch[2]["frontal"], resumed["frontal"])


def test_require_complete_keeps_complete_studies_only(builder, data_dir):
  batches = _train(builder, data_dir, 6, global_batch_size=8, seed=0, require_complete=True)
  assert all(b["available"].all() for b in batches)
  first_epoch = [i for b in batches[:3] for i in _ids(b)]
  assert len(set(first_epoch)) == 24 and set(first_epoch) <= set(COMPLETE_TRAIN)
  ids, _ = _eval_ids(builder, _config(data_dir, require_complete=True), "train", batch_size=7)
  assert sorted(ids) == COMPLETE_TRAIN


def test_process_shards_are_disjoint_and_cover_the_split(builder, data_dir):
  config = _config(data_dir)
  shards = [
    _eval_ids(builder, config, "train", batch_size=6, process_index=p, process_count=2)
    for p in range(2)
  ]
  (ids0, batches0), (ids1, batches1) = shards
  assert not set(ids0) & set(ids1)
  assert sorted(ids0 + ids1) == list(range(NUM_TRAIN))
  assert len(batches0) == len(batches1)
  for p, ids in enumerate((ids0, ids1)):
    batches = _train(
      builder, data_dir, 4, global_batch_size=8, seed=0, process_index=p, process_count=2
    )
    assert all(b["finding"].shape == (4,) for b in batches)
    seen = {i for b in batches for i in _ids(b)}
    assert seen <= set(ids), f"process {p} trained on another process's studies"


def test_eval_covers_every_study_once_with_padding_masked(builder, data_dir):
  config = _config(data_dir)
  ids, batches = _eval_ids(builder, config, "test", batch_size=5)
  assert sorted(ids) == list(range(TEST_ID_OFFSET, TEST_ID_OFFSET + NUM_TEST))
  assert len(batches) == 3
  assert all(b["frontal"].shape == (5, IMAGE_SIZE, IMAGE_SIZE, 1) for b in batches)
  np.testing.assert_array_equal(batches[-1]["valid"], [True, True, True, False, False])
  assert not batches[-1]["frontal"][3:].any()
  # Two processes, 7 + 6 studies, 2 rows each: both yield 4 batches, together every study once.
  per_process = [
    _eval_ids(builder, config, "test", batch_size=4, process_index=p, process_count=2)
    for p in range(2)
  ]
  assert [len(b) for _, b in per_process] == [4, 4]
  assert sorted(per_process[0][0] + per_process[1][0]) == sorted(ids)


def test_indivisible_batches_are_refused(builder, data_dir):
  with pytest.raises(
    ValueError,
    match=r"^global batch 30 does not divide over 4 devices; use a "
    r"multiple of 4, e.g. 32$",
  ):
    sharding.check_batch_divisible(30, 4)
  sharding.check_batch_divisible(32, 4)
  with pytest.raises(ValueError, match="global batch 30 does not divide over 4 processes"):
    batching.train_iterator(
      builder, _config(data_dir), global_batch_size=30, seed=0, process_index=0, process_count=4
    )
  with pytest.raises(ValueError, match="global batch 9 does not divide over 2 processes"):
    batching.eval_iterator(
      builder, _config(data_dir), "test", batch_size=9, process_index=0, process_count=2
    )
  with pytest.raises(ValueError, match="fewer than one batch"):
    batching.train_iterator(builder, _config(data_dir), global_batch_size=64, seed=0)


def test_to_global_batch_on_a_one_device_mesh(builder, data_dir):
  mesh = sharding.make_data_mesh(jax.devices()[:1])
  assert mesh.axis_names == ("data",) and mesh.size == 1
  sharding.check_batch_divisible(3, mesh)
  (batch,) = _train(builder, data_dir, 1, global_batch_size=8, seed=0)
  arrays = sharding.to_global_batch(batch, mesh)
  expected_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  assert sorted(arrays) == sorted(batch)
  for key, array in arrays.items():
    assert isinstance(array, jax.Array)
    assert array.shape == batch[key].shape and array.dtype == batch[key].dtype
    assert array.sharding.is_equivalent_to(expected_sharding, array.ndim), key
    np.testing.assert_array_equal(np.asarray(array), batch[key])
  with pytest.raises(ValueError, match="same leading"):
    sharding.to_global_batch({"a": np.zeros((2, 1)), "b": np.zeros((3,))}, mesh)


def test_to_global_batch_splits_rows_over_four_devices():
  # A fresh process, as the number of CPU devices is fixed when JAX starts.
  script = textwrap.dedent("""
      import numpy as np
      from mopoe_jax.platform import sharding
      mesh = sharding.make_data_mesh()
      assert mesh.shape == {"data": 4}, mesh
      batch = {"x": np.arange(8 * 3, dtype=np.float32).reshape(8, 3), "valid": np.ones(8, bool)}
      arrays = sharding.to_global_batch(batch, mesh)
      for key, array in arrays.items():
        assert array.shape == batch[key].shape, (key, array.shape)
        shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start)
        assert [s.data.shape[0] for s in shards] == [2, 2, 2, 2], key
        np.testing.assert_array_equal(np.concatenate([np.asarray(s.data) for s in shards]),
                                      batch[key])
      try:
        sharding.to_global_batch({"x": np.zeros((6, 2))}, mesh)
      except ValueError as e:
        assert str(e) == ("global batch 6 does not divide over 4 devices; use a multiple of 4, "
                          "e.g. 8"), e
      else:
        raise AssertionError("a batch of 6 over 4 devices was accepted")
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
  root = pathlib.Path(__file__).parents[1]
  result = subprocess.run(
    [sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr[-3000:]


def test_train_batches_come_from_the_configured_split(builder, data_dir):
  config = _config(data_dir, train_split="test")
  (batch,) = _take(batching.train_iterator(builder, config, global_batch_size=8, seed=0), 1)
  assert all(i >= TEST_ID_OFFSET for i in _ids(batch))


def test_the_locked_default_config_sets_every_pipeline_knob(builder, data_dir):
  from configs import default  # pylint: disable=g-import-not-at-top

  config = default.get_config().lock()
  config.data.shuffle_buffer_size = None  # a uniform permutation of the whole shard
  config.data.prefetch = 1
  data_config = _config(data_dir)
  for key in ("shuffle_buffer_size", "prefetch", "train_split", "require_complete"):
    assert key in config.data, key
    data_config[key] = config.data[key]
  epoch = sum(
    (
      _ids(b)
      for b in _take(batching.train_iterator(builder, data_config, global_batch_size=8, seed=0), 3)
    ),
    [],
  )
  # require_complete (the paper's): one epoch is 3 batches of distinct complete studies.
  assert len(set(epoch)) == 24 and set(epoch) <= set(COMPLETE_TRAIN)


def test_selected_studies_are_read_without_autograph_warnings(builder, data_dir, caplog):
  """AutoGraph converts each filter and map function of the pipeline; two lambdas on one source
  line cannot be told apart, and each evaluation logged a warning for both."""
  import logging  # pylint: disable=g-import-not-at-top

  with caplog.at_level(logging.WARNING):
    batches = list(
      batching.selected_iterator(
        builder, _config(data_dir), "train", np.array([0, 2, 5]), batch_size=4
      )
    )
  assert batches[0]["valid"].sum() == 3
  assert "AutoGraph could not transform" not in caplog.text, caplog.text[-2000:]


@pytest.mark.timeout(180)
def test_the_pipeline_imports_tensorflow_without_keras_and_keras_stays_importable(tmp_path):
  """input_pipeline/tf_import.py: TensorFlow's eager import of Keras is skipped (a quarter of
  its import time), so is the one of clu's writers (TensorBoard's hparams Keras callback), and
  Keras, the writers and that callback still work afterwards."""
  pytest.importorskip("keras")
  script = textwrap.dedent(f"""
      import sys
      from input_pipeline import tfds_source, tf_import
      assert "tensorflow" in sys.modules
      metric_writers = tf_import.metric_writers()
      assert "clu.metric_writers" in sys.modules
      keras = sorted(m for m in sys.modules if m == "keras" or m.startswith("keras."))
      assert not keras, keras[:5]
      assert "keras.src.optimizers" not in sys.modules  # no block left behind
      assert "tensorboard.plugins.hparams._keras" not in sys.modules  # no stand-in left behind
      writer = metric_writers.create_default_writer({str(tmp_path)!r})
      writer.write_scalars(1, {{"loss": 1.0}})
      writer.write_hparams({{"lr": 0.1}})
      writer.close()
      import keras.src.optimizers
      from tensorboard.plugins.hparams import api, _keras
      import tensorflow as tf
      callback = api.KerasCallback({str(tmp_path / "hp")!r}, {{"lr": 0.1}})
      assert type(callback) is _keras.Callback, type(callback)
      assert isinstance(callback, tf.keras.callbacks.Callback)
      print("OK")
  """)
  root = pathlib.Path(__file__).parents[1]
  result = subprocess.run(
    [sys.executable, "-c", script],
    cwd=root,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=170,
  )
  assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def test_tensorflow_is_imported_through_tf_import_only():
  """main.py and the input pipeline import TensorFlow and clu through
  input_pipeline/tf_import.py; a plain ``import tensorflow`` or ``from clu import ...`` run first
  would load Keras with it."""
  import ast  # pylint: disable=g-import-not-at-top

  root = pathlib.Path(__file__).parents[1]
  direct = []
  for path in [root / "main.py", *sorted((root / "input_pipeline").rglob("*.py"))]:
    if path.name == "tf_import.py":
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      names = (
        [a.name for a in node.names]
        if isinstance(node, ast.Import)
        else [node.module or ""]
        if isinstance(node, ast.ImportFrom)
        else []
      )
      if any(n.split(".")[0] in ("tensorflow", "clu") for n in names):
        direct.append(f"{path.relative_to(root)}:{node.lineno}")
  assert not direct, direct
