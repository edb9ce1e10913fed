"""The train state split over the devices (``train.shard_optimizer``; `step.StateSharding`).

Split, each device holds and updates a slice of the large parameters and of their Adam moments;
the step must compute the same numbers as the replicated one, bit for bit, and its checkpoints
must restore anywhere: onto another number of devices (a resume), onto one device (evaluation,
`mopoe_jax.inference`). The two-process run of tests/test_multihost.py trains with the split
state. The tiny model's arrays are all small, so these tests split arrays of 1,024 elements and
more (the default, 65,536, splits 99% of the paper model's parameters: below).
"""

import functools
import subprocess
import sys

from conftest import REPO, subprocess_env, tiny_config
import jax
import numpy as np
import pytest

from configs import default
from mopoe_jax.platform import sharding
from mopoe_jax.training import step as step_lib
from mopoe_jax.vae import model as model_lib


def test_the_split_dimension_divides_and_prefers_a_leading_one():
  split = functools.partial(sharding.split_axis, min_elements=1024)
  assert split((4, 4, 320, 320), 8) == 2  # the largest leading dimension that divides
  assert split((4, 640, 512), 8) == 1
  assert split((64, 64, 3), 8) == 0  # ties: the first
  assert split((2900, 640), 8) == 1  # no leading dimension divides: the minor one
  assert split((2900, 645), 8) is None  # none divides: whole on every device
  assert split((4096,), 8) == 0
  assert split((1000,), 8) is None  # fewer than min_elements
  assert split((4, 640, 512), 1) is None  # one device: nothing to split
  assert split((16, 64), 16) == 0 and split((8, 128), 16) == 1  # a leading one too small
  assert sharding.split_axis((4, 640, 512), 8, min_elements=4 * 640 * 512 + 1) is None


@pytest.mark.slow  # traces the paper model's init (about 10 s)
def test_the_default_threshold_splits_the_paper_models_large_arrays():
  """At the paper's size (59.2 M parameters) arrays of 65,536 elements and more are 99.4% of the
  parameters; on 8 devices each holds 14% of them, where replicated it held all."""
  config = default.get_config()
  model = model_lib.create_model(config, vocab_size=2900, platform="tpu")
  shapes = jax.eval_shape(
    functools.partial(step_lib.init_state, model, config), jax.random.PRNGKey(0)
  )
  params = [x.shape for x in jax.tree.leaves(shapes.params)]
  total = sum(int(np.prod(s)) for s in params)
  minimum = config.train.shard_optimizer_min_elements
  for devices in (2, 8, 16):
    held = 0
    for s in params:
      axis = sharding.split_axis(s, devices, minimum)
      held += int(np.prod(s)) // (1 if axis is None else devices)
    assert held / total < 1 / devices + 0.01, (devices, held / total)


def test_the_setting_and_its_spellings():
  mesh = sharding.make_data_mesh(jax.devices()[:1])
  for value, want in (("auto", "auto"), ("True", "on"), ("1", "on"), ("false", "off")):
    assert step_lib.shard_optimizer_setting(value) == want
  with pytest.raises(ValueError, match="train.shard_optimizer must be 'auto', true or false"):
    step_lib.validate_config(tiny_config("/nowhere", shard_optimizer="sometimes"), 1)
  with pytest.raises(ValueError, match="shard_optimizer_min_elements must be >= 1"):
    step_lib.validate_config(tiny_config("/nowhere", shard_optimizer_min_elements=0), 1)
  # One device: nothing to split, whatever the setting.
  layout = step_lib.StateSharding.from_config(tiny_config("/nowhere", shard_optimizer="true"), mesh)
  assert not layout.split


# ------------------------------------------------------------------------------------------------
# 8 devices: the same numbers as the replicated step; a checkpoint. Then 4 of them resume it, and
# one device restores it for evaluation and for the trained-model API. One process with 8 virtual
# devices does all three (a mesh over the first 4 for the resume): a second process for the
# resume cost a start-up, and tracing the model again, for nothing the checkpoint does not carry.

_COMMON = """
import sys
sys.path.insert(0, "tests")
from conftest import small_config, state_tree, assert_trees_equal  # the suite's compile cache
import jax, numpy as np
from mopoe_jax.vae import model as model_lib
from mopoe_jax.training import checkpointing, fingerprint, model_file, programs, step as step_lib
from mopoe_jax.platform import sharding
DATASET = "synthetic_cxr/tiny/1.0.0"
WORDS = ["<exc>", "<pad>", "<eos>"] + [f"w{i}" for i in range(61)]


def config_of(setting, devices=8):
  config = small_config(modalities=("frontal", "text"))
  config.train.shard_optimizer = setting
  config.train.shard_optimizer_min_elements = 1024
  config.train.batch_size = 16
  config.train.image_grid_studies = 0
  config.train.compilation_cache = False
  step_lib.validate_config(config, devices)
  return config


def build(config, mesh):
  model = model_lib.create_model(config, vocab_size=len(WORDS))
  step_config = step_lib.StepConfig.from_config(config, model, pad_id=1)
  init_rng, step_rng = jax.random.split(jax.random.PRNGKey(0))
  built = programs.Programs.build(config, model, step_config, mesh, init_rng)
  built.compile_step(step_rng)
  return built, init_rng, step_rng


def batches(config, n, seed=0):
  rs = np.random.RandomState(seed)
  out = []
  for _ in range(n):
    b = model_lib.dummy_batch(config, config.train.batch_size)
    b = {k: b[k] for k in ("frontal", "lateral", "text", "available")}
    b["frontal"] = rs.randint(0, 256, b["frontal"].shape).astype(np.uint8)
    b["text"] = rs.randint(0, len(WORDS), b["text"].shape).astype(np.int32)
    b["available"] = rs.rand(*b["available"].shape) < 0.8
    out.append(b)
  return out


def split_count(tree):
  return sum(not x.sharding.is_fully_replicated for x in jax.tree.leaves(tree))
"""

_SCRIPT = (
  _COMMON
  + """
workdir = sys.argv[1]
assert jax.device_count() == 8, jax.devices()
mesh = sharding.make_data_mesh()
# 'auto' splits on accelerators only.
assert not step_lib.StateSharding.from_config(config_of("auto"), mesh).split
results = {}
for setting in ("false", "true"):
  config = config_of(setting)
  built, init_rng, step_rng = build(config, mesh)
  state = built.init_state(init_rng)
  for x, want in zip(jax.tree.leaves(state), jax.tree.leaves(built.abstract)):
    assert x.sharding.is_equivalent_to(want.sharding, x.ndim), (x.sharding, want.sharding)
  initial = state_tree(state)
  step = built.train_step()
  losses = []
  for b in batches(config, 3):
    state, metrics = step(state, sharding.to_global_batch(b, mesh), step_rng)
    losses.append(float(metrics["loss"]))
  # The eval step on the state as it is (split: gathered before the forward pass).
  batch = dict(batches(config, 1, seed=3)[0], valid=np.arange(16) < 13)
  sums = jax.device_get(
    built.eval_step(state, config.train.batch_size)(state, sharding.to_global_batch(batch, mesh))
  )
  results[setting] = dict(
    built=built,
    initial=initial,
    losses=losses,
    final=state_tree(state),
    state=state,
    eval_sums=sums,
    memory=built._compile.result().memory_analysis(),
    per_device=sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state)),
  )
  print(setting, "SPLIT", split_count(state.params), split_count(state.opt_state),
        split_count(state.batch_stats), "BYTES", results[setting]["per_device"], "ARGUMENTS",
        results[setting]["memory"].argument_size_in_bytes, flush=True)

replicated, split = results["false"], results["true"]
assert split_count(replicated["state"]) == 0
assert split_count(split["state"].params) > 0 and split_count(split["state"].opt_state) > 0
assert split_count(split["state"].batch_stats) == 0
assert split["per_device"] < replicated["per_device"] / 2  # state bytes held per device
assert (
  split["memory"].argument_size_in_bytes < replicated["memory"].argument_size_in_bytes / 2
)
assert_trees_equal(split["initial"], replicated["initial"])  # the same initial state
assert split["losses"] == replicated["losses"], (split["losses"], replicated["losses"])
assert_trees_equal(split["final"], replicated["final"])  # parameters, statistics, Adam state
assert_trees_equal(split["eval_sums"], replicated["eval_sums"])
print("EQUAL", split["losses"])

# The stored step's key names the state's shardings: the same config over another layout is
# another program.
built = split["built"]
other = programs.train_program(
  config_of("true"), built.model, built.step_config, mesh,
  sharding.abstract(built.abstract, sharding.replicated(mesh)), built.batch_shape,
)
print("KEYS_DIFFER", other is not built.stored_step)  # one object per key (jitted_once)

# A checkpoint of the split state, as training writes it; restored onto the split layout.
config, state = config_of("true"), split["state"]
manager = checkpointing.create_manager(workdir, async_save=False)
fields = fingerprint.fields(config, dataset=DATASET, vocab_size=len(WORDS), process_count=1)
checkpointing.save(manager, state, {"fields": fields})
manager.wait_until_finished()
model_file.write(workdir, config, WORDS, DATASET)
restored = checkpointing.restore_train_state(manager, built.abstract, 3)
assert split_count(restored.params) == split_count(state.params)
assert_trees_equal(state_tree(restored), split["final"])
expected = [np.asarray(x) for x in jax.tree.leaves(split["final"])]
del results, replicated, split, restored, state, built
print("SAVED")

# 4 of the devices resume the checkpoint (each holds a quarter of the split arrays, not an
# eighth), from the files alone.
from mopoe_jax import inference
from mopoe_jax.training import restore
mesh = sharding.make_data_mesh(jax.devices()[:4])
config = config_of("true", devices=4)
built, init_rng, step_rng = build(config, mesh)
manager = checkpointing.create_manager(workdir, read_only=True)
state = checkpointing.restore_train_state(manager, built.abstract, 3)
state = state.replace(bad_step=jax.device_put(np.int32(-1), built.abstract.bad_step.sharding))
for x, want in zip(jax.tree.leaves(state), jax.tree.leaves(built.abstract)):
  assert x.sharding.is_equivalent_to(want.sharding, x.ndim), (x.sharding, want.sharding)
assert split_count(state.params) > 0
for x, y in zip(jax.tree.leaves(state_tree(state)), expected):
  np.testing.assert_array_equal(np.asarray(x), y)
# ... and onto a replicated layout (train.shard_optimizer=false): a checkpoint does not
# depend on the setting.
config_off = config_of("false", devices=4)
whole = programs.Programs.build(
  config_off, built.model, built.step_config, mesh, init_rng
).abstract  # nothing compiles
assert split_count(whole) == 0
restored = checkpointing.restore_train_state(manager, whole, 3)
assert split_count(restored.params) == 0
for x, y in zip(jax.tree.leaves(state_tree(restored)), expected):
  np.testing.assert_array_equal(np.asarray(x), y)
# Training resumes on 4 devices.
batch = sharding.to_global_batch(batches(config, 1, seed=7)[0], mesh)
state, metrics = built.train_step()(state, batch, step_rng)
assert int(state.step) == 4 and float(metrics["finite"]) == 1.0, metrics
print("RESUMED", float(metrics["loss"]))

# Evaluation's restore and the trained-model API: one device.
tree = jax.tree.unflatten(jax.tree.structure(state_tree(state)), expected)  # step 3's
step, _, variables = restore.restore_model(
  config, workdir, dataset=DATASET, vocab_size=len(WORDS)
)
assert step == 3
assert {x.sharding.device_set.pop() for x in jax.tree.leaves(variables)} == {jax.devices()[0]}
expected_variables = {"params": tree["params"], "batch_stats": tree["batch_stats"]}
assert_trees_equal(jax.device_get(variables), expected_variables)
trained = inference.TrainedModel.load(workdir)
assert trained.step == 3
assert_trees_equal(jax.device_get(trained.variables), jax.device_get(variables))
print("RESTORED")
"""
)


def _run(script: str, devices: int, workdir) -> str:
  env = subprocess_env(
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", PYTHONPATH=REPO
  )
  out = subprocess.run(
    [sys.executable, "-c", script, str(workdir)],
    env=env,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=840,
  )
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-5000:]
  return out.stdout


@pytest.mark.slow  # a subprocess with 8 virtual devices, compiling three train steps
@pytest.mark.timeout(1800)
def test_split_state_matches_replicated_and_its_checkpoint_restores_anywhere(tmp_path):
  out = _run(_SCRIPT, 8, tmp_path)
  for line in ("EQUAL", "KEYS_DIFFER True", "SAVED", "RESUMED", "RESTORED"):
    assert line in out, (line, out)
