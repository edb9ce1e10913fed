"""Any device count: sizes that round to the devices, and the tiny step (16 px, frontal and text)
over 16 devices."""

import subprocess
import sys

from conftest import REPO, subprocess_env, tiny_config
import pytest

from mopoe_jax.training import step as step_lib


def test_per_device_batch_decides_the_global_batch_and_grids_round_up():
  config = tiny_config("/nowhere", per_device_batch_size=3, image_grid_studies=8)
  resolved = step_lib.for_devices(config, 16)
  assert resolved.train.batch_size == 48 and resolved.train.image_grid_studies == 16
  step_lib.validate_config(resolved, 16)  # now fits
  assert config.train.batch_size == 32 and config.train.image_grid_studies == 8  # a copy
  # Without per_device_batch_size the global batch is the config's, and must divide.
  plain = step_lib.for_devices(tiny_config("/nowhere", image_grid_studies=0), 16)
  assert plain.train.batch_size == 32 and plain.train.image_grid_studies == 0
  with pytest.raises(ValueError, match="global batch 32 does not divide over 64 devices"):
    step_lib.validate_config(step_lib.for_devices(tiny_config("/nowhere"), 64), 64)
  with pytest.raises(ValueError, match="per_device_batch_size must be >= 1"):
    step_lib.for_devices(tiny_config("/nowhere", per_device_batch_size=0), 2)


_SIXTEEN_DEVICES = """
import sys
sys.path.insert(0, "tests")
from conftest import small_config  # also the suite's compile settings and cache
import jax, numpy as np
from mopoe_jax.vae import model as model_lib
from mopoe_jax.training import programs, step as step_lib
from mopoe_jax.platform import sharding
assert jax.device_count() == 16, jax.devices()
config = small_config(modalities=("frontal", "text"))
config.train.per_device_batch_size = 2
config.train.compilation_cache = False
config = step_lib.for_devices(config, jax.device_count())
step_lib.validate_config(config, jax.device_count())
model = model_lib.create_model(config, vocab_size=64)
mesh = sharding.make_data_mesh()
step_config = step_lib.StepConfig.from_config(config, model, pad_id=1)
init_rng, step_rng = jax.random.split(jax.random.PRNGKey(0))
built = programs.Programs.build(config, model, step_config, mesh, init_rng)
lowered = built.stored_step.lower(jax.tree.leaves(built.abstract), built.batch_shape, step_rng)
text = lowered.compile().as_text()
built.eval_step(built.abstract, config.train.batch_size)  # compiles the eval step too
frontal = built.batch_shape["frontal"]
print("BATCH", config.train.batch_size, "GRID", config.train.image_grid_studies)
print("ALL_REDUCE", "all-reduce" in text)
print("ROWS_PER_DEVICE", frontal.sharding.shard_shape(frontal.shape))
"""


@pytest.mark.slow  # a subprocess with 16 virtual devices compiling the train step
@pytest.mark.timeout(600)
def test_the_tiny_train_step_lowers_and_compiles_over_16_devices():
  env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=16", PYTHONPATH=REPO)
  out = subprocess.run(
    [sys.executable, "-c", _SIXTEEN_DEVICES],
    env=env,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=540,
  )
  assert out.returncode == 0, out.stderr[-4000:]
  assert "BATCH 32 GRID 16" in out.stdout
  assert "ALL_REDUCE True" in out.stdout  # gradients and BatchNorm statistics over 16 devices
  assert "ROWS_PER_DEVICE (2, 16, 16, 1)" in out.stdout  # each device holds its 2 rows
