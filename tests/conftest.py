"""Shared test set-up: CPU only, fast compiles, TensorFlow kept off accelerators."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import tensorflow as tf  # noqa: E402

tf.config.set_visible_devices([], "GPU")

import jax  # noqa: E402

# Tests are compile-bound on CPU: skip most XLA optimizations, and reuse compiled programs
# across test modules (same program, same cache entry) through the persistent cache.
jax.config.update("jax_disable_most_optimizations", True)
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("MOPOE_TEST_XLA_CACHE", "/tmp/mopoe_jax_test_xla_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_tiny_dir(tmp_path_factory):
  """Builds synthetic_cxr/tiny (32 px, 32 tokens, 384/128/128 studies) once per session."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import input_pipeline.synthetic_cxr  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  tfds.builder("synthetic_cxr/tiny", data_dir=data_dir).download_and_prepare()
  return data_dir


def tiny_config(data_dir: str, **train_overrides):
  """configs/tiny.py pointed at ``data_dir`` with train fields overridden."""
  from configs import tiny  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.data.data_dir = data_dir
  for key, value in train_overrides.items():
    config.train[key] = value
  return config


_loaded = {}


def load_data(config):
  """The data source of ``config.data`` (`input_pipeline.data.load`), loaded once per session."""
  from input_pipeline import data as data_lib  # pylint: disable=g-import-not-at-top
  key = config.data.to_json()
  if key not in _loaded:
    _loaded[key] = data_lib.load(config.data)
  return _loaded[key]


def train_run(config, workdir: str):
  """`train.train_and_evaluate` as main.py calls it: the data source and a TensorBoard writer."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  from mopoe_jax import train  # pylint: disable=g-import-not-at-top
  writer = metric_writers.create_default_writer(workdir)
  try:
    return train.train_and_evaluate(config, workdir, load_data(config), writer)
  finally:
    writer.close()
