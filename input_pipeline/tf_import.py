"""TensorFlow for the input pipeline (``from input_pipeline.tf_import import tf``), imported
without the Keras optimizers that ``import tensorflow`` loads eagerly.

TensorFlow 2.16+ imports ``keras.src.optimizers`` (and with it most of Keras) at import time,
to register optimizers for SavedModel loading, and carries on without it if that import fails.
The input pipeline uses tf.data and tfds only: skipping it takes about a quarter off TensorFlow's
import (9.8 -> 7.2 CPU-s measured on a busy 2-core AMD EPYC, TensorFlow 2.21), paid by every
main.py start. Keras itself stays importable: the block lasts for TensorFlow's import only.
Where TensorFlow is already imported, this is a plain import.
"""

import sys

_EAGER_KERAS = "keras.src.optimizers"

if "tensorflow" in sys.modules or _EAGER_KERAS in sys.modules:
  import tensorflow as tf
else:
  sys.modules[_EAGER_KERAS] = None  # an import of it raises ImportError, which TF catches
  try:
    import tensorflow as tf
  finally:
    if sys.modules.get(_EAGER_KERAS, 0) is None:
      del sys.modules[_EAGER_KERAS]

__all__ = ["tf"]
