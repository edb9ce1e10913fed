"""The library stands without the data side: no TensorFlow, no tfds, no input_pipeline.

TensorFlow and tfds belong to the input pipeline, which the entry point builds; the model,
fusion, objective, layers, train step, loop and evaluators import and run without them (a GPU
or TPU machine needs neither).
"""

import ast
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# Packages the library may not import: the data side, and clu (its writers import TensorFlow;
# the entry point creates them and hands them in).
FORBIDDEN = ("tensorflow", "tensorflow_datasets", "input_pipeline", "clu")


def _imported_modules(path: pathlib.Path) -> set[str]:
  tree = ast.parse(path.read_text(), filename=str(path))
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.add(node.module)
  return names


def test_no_library_module_imports_the_data_side():
  modules = sorted((REPO / "mopoe_jax").rglob("*.py"))
  assert len(modules) > 10
  offenders = {}
  for path in modules:
    bad = {n for n in _imported_modules(path) if n.split(".")[0] in FORBIDDEN}
    if bad:
      offenders[str(path.relative_to(REPO))] = sorted(bad)
  assert not offenders, offenders


@pytest.mark.slow  # a subprocess that traces the train step
@pytest.mark.timeout(300)
def test_every_library_module_imports_where_tensorflow_cannot_be_imported():
  """Each mopoe_jax module imports, and the train step traces, where `import tensorflow` and
  `import tensorflow_datasets` raise ImportError. The step runs there too: the JAX benchmark
  worker trains with both blocked (tests/test_benchmarks.py). No module loads scikit-learn or
  Matplotlib when imported: the probes, coherence and charts import them when they run, so a
  training start (or an evaluation without them) does not pay for them."""
  script = textwrap.dedent(f"""
      import sys
      for name in ("tensorflow", "tensorflow_datasets"):
        sys.modules[name] = None  # `import tensorflow` now raises ImportError
      sys.path.insert(0, {str(REPO)!r})
      import functools, importlib, pkgutil
      import jax
      import mopoe_jax
      names = [info.name for info in pkgutil.walk_packages(mopoe_jax.__path__, "mopoe_jax.")]
      for name in names:
        importlib.import_module(name)
      from configs import tiny
      from mopoe_jax.vae import model as model_lib
      from mopoe_jax.training import step as step_lib
      config = tiny.get_config()
      model = model_lib.create_model(config, vocab_size=40)
      sc = step_lib.StepConfig.from_config(config, model, pad_id=1)
      state = jax.eval_shape(functools.partial(step_lib.init_state, model, config),
                             jax.random.PRNGKey(0))
      batch = model_lib.dummy_batch(config, 16)
      _, metrics = jax.eval_shape(functools.partial(step_lib.train_step, model=model,
                                                    step_config=sc),
                                  state, batch, jax.random.PRNGKey(1))
      assert metrics["loss"].shape == ()
      loaded = {{m.split(".")[0] for m, v in sys.modules.items() if v}}
      assert not loaded & {{"tensorflow", "tensorflow_datasets", "clu", "input_pipeline"}}
      # Loaded by the evaluators that use them, not by an import (2-3 CPU-s of every start).
      assert not loaded & {{"sklearn", "matplotlib"}}, loaded & {{"sklearn", "matplotlib"}}
      print("OK", len(names))
      """)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-c", script], capture_output=True, text=True, timeout=280, env=env, cwd=REPO
  )
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
  assert int(proc.stdout.split("OK")[-1]) > 10  # every module was imported
