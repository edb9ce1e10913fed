"""TensorFlow for the input pipeline (``from input_pipeline.tf_import import tf``), and clu's
metric writers (`metric_writers`), imported without Keras.

TensorFlow 2.16+ imports ``keras.src.optimizers`` (and with it most of Keras) at import time,
to register optimizers for SavedModel loading, and carries on without it if that import fails.
The input pipeline uses tf.data and tfds only: skipping it takes about a quarter off TensorFlow's
import (9.8 -> 7.2 CPU-s measured on a busy 2-core AMD EPYC, TensorFlow 2.21), paid by every
main.py start. Keras itself stays importable: the block lasts for TensorFlow's import only.
Where TensorFlow is already imported, this is a plain import.
"""

import sys
import types

_EAGER_KERAS = "keras.src.optimizers"
_HPARAMS_KERAS = "tensorboard.plugins.hparams._keras"

if "tensorflow" in sys.modules or _EAGER_KERAS in sys.modules:
  import tensorflow as tf
else:
  sys.modules[_EAGER_KERAS] = None  # an import of it raises ImportError, which TF catches
  try:
    import tensorflow as tf
  finally:
    if sys.modules.get(_EAGER_KERAS, 0) is None:
      del sys.modules[_EAGER_KERAS]


class _KerasCallback:
  """Stands in for TensorBoard's hparams Keras callback while clu is imported; making one
  imports the real module (the stand-in is gone from sys.modules by then) and returns its
  callback."""

  def __new__(cls, *args, **kwargs):
    from tensorboard.plugins.hparams import _keras  # pylint: disable=g-import-not-at-top

    return _keras.Callback(*args, **kwargs)


def metric_writers():
  """``clu.metric_writers``, imported without loading Keras.

  clu's TensorBoard writer imports ``tensorboard.plugins.hparams.api``, which imports the
  hparams Keras callback; defining it touches ``tf.keras``, which loads all of Keras and with it
  scikit-learn and SciPy: 1.9 CPU-s of the 2.0 that importing clu took (2-core AMD EPYC,
  TensorFlow 2.21), paid by every main.py start that trains or evaluates. The writers never use
  the callback: during clu's import that module is a stand-in (`_KerasCallback`); afterwards the
  real one imports as before.
  """
  stand_in = None
  if "clu.metric_writers" not in sys.modules and _HPARAMS_KERAS not in sys.modules:
    stand_in = types.ModuleType(_HPARAMS_KERAS)
    stand_in.Callback = _KerasCallback
    sys.modules[_HPARAMS_KERAS] = stand_in
  try:
    from clu import metric_writers as writers  # pylint: disable=g-import-not-at-top
  finally:
    if stand_in is not None and sys.modules.get(_HPARAMS_KERAS) is stand_in:
      del sys.modules[_HPARAMS_KERAS]
  return writers


__all__ = ["metric_writers", "tf"]
