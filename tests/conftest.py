"""Shared test set-up: CPU only, fast compiles, TensorFlow kept off accelerators."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import tensorflow as tf  # noqa: E402

tf.config.set_visible_devices([], "GPU")
