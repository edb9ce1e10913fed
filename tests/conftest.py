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
