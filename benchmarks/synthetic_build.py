"""How fast the synthetic dataset renders and builds.

  python benchmarks/synthetic_build.py                 # synthetic_cxr/small
  python benchmarks/synthetic_build.py --config=tiny --render_studies=500

Prints studies/s of (1) sampling findings and reports alone, (2) rendering both views (plus
sampling), (3) PNG encoding, and (4) the whole tfds build of the config into a temporary
directory (vocabulary pass, rendering, encoding, serialization, shuffling, writing). Wall-clock
and this process's CPU time are both shown: on a shared machine the CPU figure is the steadier
one.
"""

import os
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import (
  app,  # noqa: E402
  flags,  # noqa: E402
)
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from input_pipeline.synthetic_cxr import studies  # noqa: E402
from input_pipeline.synthetic_cxr import synthetic_cxr_dataset_builder as builder_lib  # noqa: E402

_CONFIG = flags.DEFINE_enum(
  "config", "small", ["tiny", "small", "paper"], "synthetic_cxr config to benchmark."
)
_RENDER_STUDIES = flags.DEFINE_integer(
  "render_studies", 2000, "Studies timed for sampling, rendering and encoding."
)
_BUILD = flags.DEFINE_bool("build", True, "Also time the whole tfds build.")
_DATA_DIR = flags.DEFINE_string(
  "data_dir", None, "Where to build (default: a temporary directory, removed)."
)


def _timed(fn, n):
  wall, cpu = time.perf_counter(), time.process_time()
  result = fn()
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return result, f"{n / wall:8.0f} studies/s wall ({wall:6.2f} s), {n / cpu:8.0f} /s CPU"


def main(argv):
  del argv
  tf.config.set_visible_devices([], "GPU")
  config = next(c for c in builder_lib.Builder.BUILDER_CONFIGS if c.name == _CONFIG.value)
  n = _RENDER_STUDIES.value
  kwargs = dict(
    image_size=config.image_size,
    p_missing_lateral=config.p_missing_lateral,
    p_missing_text=config.p_missing_text,
  )
  print(
    f"synthetic_cxr/{config.name}: {config.image_size} px, {config.text_length} tokens, "
    f"{config.num_train}/{config.num_validation}/{config.num_test} studies; "
    f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
  )

  _, line = _timed(
    lambda: [
      studies.generate_study(config.seed, "train", i, render_images=False, **kwargs)
      for i in range(n)
    ],
    n,
  )
  print(f"  sampling + report only       {line}")
  rendered, line = _timed(
    lambda: [studies.generate_study(config.seed, "train", i, **kwargs) for i in range(n)], n
  )
  print(f"  sampling + rendering         {line}")
  _, line = _timed(
    lambda: [
      [builder_lib.encode_png(s.frontal)]
      + ([builder_lib.encode_png(s.lateral)] if s.lateral is not None else [])
      for s in rendered
    ],
    n,
  )
  print(f"  PNG encoding (both views)    {line}")

  if not _BUILD.value:
    return
  data_dir = _DATA_DIR.value or tempfile.mkdtemp(prefix="synthetic_cxr_bench_")
  try:
    tfds.disable_progress_bar()
    builder = tfds.builder(f"synthetic_cxr/{config.name}", data_dir=data_dir)
    total = config.num_train + config.num_validation + config.num_test
    _, line = _timed(builder.download_and_prepare, total)
    print(f"  whole tfds build ({total} studies, incl. vocabulary pass)")
    print(f"                               {line}")
    size = sum(
      os.path.getsize(os.path.join(root, f))
      for root, _, files in os.walk(builder.data_dir)
      for f in files
    )
    print(f"  on disk: {size / 2**20:.1f} MiB in {builder.data_dir}")
  finally:
    if _DATA_DIR.value is None:
      shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
