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


@pytest.mark.timeout(300)
def test_train_step_runs_where_tensorflow_cannot_be_imported():
  script = textwrap.dedent(f"""
      import sys
      for name in ("tensorflow", "tensorflow_datasets"):
        sys.modules[name] = None  # `import tensorflow` now raises ImportError
      sys.path.insert(0, {str(REPO)!r})
      import functools, importlib, pkgutil
      import jax, numpy as np
      jax.config.update("jax_disable_most_optimizations", True)
      import mopoe_jax
      for info in pkgutil.walk_packages(mopoe_jax.__path__, "mopoe_jax."):
        importlib.import_module(info.name)
      from configs import tiny
      from mopoe_jax import model as model_lib, step as step_lib
      config = tiny.get_config()
      model = model_lib.create_model(config, vocab_size=40)
      sc = step_lib.StepConfig.from_config(config, model, pad_id=1)
      state = jax.jit(functools.partial(step_lib.init_state, model, config))(
          jax.random.PRNGKey(0))
      rng = np.random.default_rng(0)
      batch = model_lib.dummy_batch(config, 16)
      batch["frontal"] = rng.integers(0, 255, batch["frontal"].shape, np.uint8)
      batch["text"] = rng.integers(0, 40, batch["text"].shape, np.int32)
      step = jax.jit(functools.partial(step_lib.train_step, model=model, step_config=sc))
      losses = []
      for _ in range(3):
        state, metrics = step(state, batch, jax.random.PRNGKey(1))
        losses.append(float(metrics["loss"]))
      assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
      assert "tensorflow" not in {{m.split(".")[0] for m, v in sys.modules.items() if v}}
      print("OK", losses)
      """)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=280, env=env, cwd=REPO)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
