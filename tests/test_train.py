"""Training: the loss falls, checkpoints round-trip, kill/SIGTERM and resume are exact."""

import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf

from conftest import assert_trees_equal, load_data, state_tree, tiny_config, train_run
from input_pipeline import data as data_lib
from mopoe_jax import checkpointing, evaluate, fingerprint, step as step_lib, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _scalars(workdir, tag):
  """(step, value) pairs of a TensorBoard scalar written by clu."""
  out = []
  for root, _, files in os.walk(workdir):
    for f in files:
      if not f.startswith("events.out.tfevents"):
        continue
      for event in tf.compat.v1.train.summary_iterator(os.path.join(root, f)):
        for v in event.summary.value:
          if v.tag == tag:
            value = tf.make_ndarray(v.tensor) if v.HasField("tensor") else v.simple_value
            out.append((event.step, float(value)))
  return sorted(out)


def test_loss_falls_and_tensorboard_has_the_metrics(synthetic_tiny_dir, tmp_path):
  config = tiny_config(synthetic_tiny_dir, num_steps=160, log_every_steps=20,
                       eval_every_steps=80, checkpoint_every_steps=160)
  train_run(config, str(tmp_path))
  losses = [v for _, v in _scalars(str(tmp_path), "train_loss")]
  assert len(losses) == 8
  assert losses[-1] < 0.8 * losses[0], losses
  evals = _scalars(str(tmp_path), "eval_loss")
  assert [s for s, _ in evals] == [80, 160] and evals[1][1] < evals[0][1]
  for tag in ("train_nll/frontal", "train_nll/text", "train_kl_subset/frontal+lateral+text",
              "train_learning_rate", "train_steps_per_second", "eval_nll/lateral"):
    assert _scalars(str(tmp_path), tag), tag


def test_checkpoint_round_trip(straight_run):
  config, workdir, state = straight_run
  manager = checkpointing.create_manager(workdir, read_only=True)
  assert manager.latest_step() == 30
  # Retention: the newest keep_checkpoints (2) plus the best by eval loss.
  evals = dict(_scalars(workdir, "eval_loss"))
  best = min(evals, key=evals.get)
  assert set(manager.all_steps()) == {20, 30, best}
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
                          if isinstance(x, jax.Array) else x, state)
  restored = checkpointing.restore_train_state(manager, abstract, 30)
  assert_trees_equal(state_tree(restored), state_tree(state))
  meta = checkpointing.read_meta(manager, 30)
  data = load_data(config)
  assert meta["data_position"] == 30 and meta["eval_due"]  # saved before its evaluation
  assert meta["fields"] == fingerprint.fields(config, dataset=data.name,
                                              vocab_size=len(data.vocab), process_count=1)
  # Evaluation restores parameters and batch statistics without the optimizer state.
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  abstract_vars = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
  only_model = checkpointing.restore_model_variables(manager, abstract_vars, 30)
  assert_trees_equal(jax.device_get(only_model), jax.device_get(variables))


def test_kill_and_resume_is_bit_identical(straight_run, tmp_path):
  """A run killed hard after step 20 (its last checkpoint) and resumed ends where the straight
  run ended: same batches from the data position, same rngs, same optimizer state."""
  config, workdir, straight = straight_run
  shutil.copytree(os.path.join(checkpointing.checkpoint_dir(workdir), "20"),
                  os.path.join(checkpointing.checkpoint_dir(str(tmp_path)), "20"))
  assert checkpointing.create_manager(str(tmp_path), read_only=True).latest_step() == 20
  resumed = train_run(config, str(tmp_path))
  assert int(resumed.step) == 30
  assert_trees_equal(state_tree(resumed), state_tree(straight))


def test_sigterm_leaves_a_loadable_checkpoint_and_resume_matches(straight_run, tmp_path,
                                                                 monkeypatch):
  config, _, straight = straight_run
  real_batches = data_lib.TfdsData.train_batches

  def batches_that_get_preempted(self, **kwargs):
    for i, batch in enumerate(real_batches(self, **kwargs)):
      if i == 7:  # a real SIGTERM while the 8th step runs
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  monkeypatch.setattr(data_lib.TfdsData, "train_batches", batches_that_get_preempted)
  with pytest.raises(train.Preempted, match="Preempted at step 8; .*Rerun the same command"):
    train_run(config, str(tmp_path))
  manager = checkpointing.create_manager(str(tmp_path), read_only=True)
  assert manager.latest_step() == 8
  monkeypatch.setattr(data_lib.TfdsData, "train_batches", real_batches)
  resumed = train_run(config, str(tmp_path))
  assert_trees_equal(state_tree(resumed), state_tree(straight))


def test_non_finite_loss_stops_with_the_step(synthetic_tiny_dir, tmp_path):
  config = tiny_config(synthetic_tiny_dir, num_steps=30, learning_rate=1e30, warmup_steps=0,
                       log_every_steps=5, checkpoint_every_steps=30, eval_every_steps=30)
  with pytest.raises(train.NonFiniteError, match=r"not finite at step \d+; no checkpoint"):
    train_run(config, str(tmp_path))


def test_bad_configs_fail_before_compiling(synthetic_tiny_dir, tmp_path):
  config = tiny_config(synthetic_tiny_dir, batch_size=5)
  with pytest.raises(ValueError, match="batch_size=5 is smaller than the 7 subsets"):
    step_lib.validate_config(config, 1)
  config = tiny_config(synthetic_tiny_dir, batch_size=33)
  with pytest.raises(ValueError, match="global batch 33 does not divide over 2 devices"):
    step_lib.validate_config(config, 2)
  config = tiny_config(synthetic_tiny_dir, image_grid_studies=3)
  with pytest.raises(ValueError, match=r"image_grid_studies=3 does not divide over the 2 devices"
                     r".*--config.train.image_grid_studies=4"):
    step_lib.validate_config(config, 2)
  config = tiny_config(synthetic_tiny_dir, process_id=1)
  with pytest.raises(ValueError, match=r"config.train.process_id set but config.train.multihost "
                     r"is False; add --config.train.multihost=true"):
    step_lib.validate_config(config, 1)
  config = tiny_config(synthetic_tiny_dir)
  config.data.image_size = 64
  with pytest.raises(ValueError, match="Image size 64 does not fit the networks"):
    step_lib.validate_config(config, 1)
  config = tiny_config(synthetic_tiny_dir)
  config.model.image_encoder_widths = (8, 16, 16, 16, 16)
  config.model.image_decoder_widths = (16, 16, 16, 16, 8)
  config.data.image_size = 64
  with pytest.raises(ValueError, match="has 32 px images and 32-token texts"):
    data_lib.load(config.data)
  with pytest.raises(AttributeError):
    tiny_config(synthetic_tiny_dir).lock().train.batch_sise = 3  # unknown field


_TWO_DEVICES_SCRIPT = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
sys.path.insert(0, {repo!r}); sys.path.insert(0, {repo!r} + "/tests")
import functools
import jax, numpy as np
jax.config.update("jax_disable_most_optimizations", True)
from jax.sharding import NamedSharding, PartitionSpec as P
from conftest import load_data, tiny_config
from mopoe_jax import model as model_lib, sharding, step as step_lib
config = tiny_config({data_dir!r})
data = load_data(config)
model = model_lib.create_model(config, len(data.vocab))
sc = step_lib.StepConfig.from_config(config, model, pad_id=data.vocab.pad_id)
it = data.train_batches(global_batch_size=32, seed=0)
batches = [next(it) for _ in range(3)]
out = {{}}
for n in (1, 2):
  mesh = sharding.make_data_mesh(jax.devices()[:n])
  rep, shd = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  state = jax.jit(functools.partial(step_lib.init_state, model, config),
                  out_shardings=rep)(jax.random.PRNGKey(0))
  trees = {{"init_params": state.params, "init_batch_stats": state.batch_stats}}
  step = jax.jit(functools.partial(step_lib.train_step, model=model, step_config=sc),
                 in_shardings=(rep, shd, rep), out_shardings=(rep, rep))
  metrics = []
  for b in batches:
    state, m = step(state, sharding.to_global_batch(b, mesh), jax.random.PRNGKey(1))
    m = jax.block_until_ready(m)  # block on each step: no CPU-collective deadlock
    metrics += [float(m["loss"]), float(m["grad_norm"]), float(m["kl"])]
  trees.update(params=state.params, batch_stats=state.batch_stats,
               adam_mu=state.opt_state[0][0].mu, metrics=np.asarray(metrics))
  for kind, tree in jax.device_get(trees).items():
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      out[f"{{n}}|{{kind}}|{{jax.tree_util.keystr(path)}}"] = np.asarray(leaf)
np.savez({out!r}, **out)
"""


def _by_kind(arrays, n: int, kind: str) -> dict:
  prefix = f"{n}|{kind}|"
  return {k[len(prefix):]: arrays[k] for k in arrays.files if k.startswith(prefix)}


@pytest.mark.timeout(400)
def test_two_devices_match_one_device(synthetic_tiny_dir, tmp_path):
  """Three data-parallel steps over 2 virtual CPU devices equal the 1-device steps."""
  out = str(tmp_path / "trees.npz")
  proc = subprocess.run([sys.executable, "-c", _TWO_DEVICES_SCRIPT.format(
      repo=REPO, data_dir=synthetic_tiny_dir, out=out)], capture_output=True, text=True,
                        timeout=360)
  assert proc.returncode == 0, proc.stderr[-3000:]
  arrays = np.load(out)
  one, two = ({kind: _by_kind(arrays, n, kind) for kind in (
      "init_params", "init_batch_stats", "params", "batch_stats", "adam_mu", "metrics")}
              for n in (1, 2))
  for kind in one:  # the same trees: same leaves, same shapes
    assert one[kind].keys() == two[kind].keys() and one[kind], kind
    for path in one[kind]:
      assert one[kind][path].shape == two[kind][path].shape, (kind, path)
  assert_trees_equal(one["init_params"], two["init_params"])
  # Loss, gradient norm and KL of the 3 steps (the later ones see the updated parameters).
  np.testing.assert_allclose(one["metrics"][""], two["metrics"][""], rtol=2e-4)
  # Parameters. A bias feeding BatchNorm has an exactly zero gradient, which round-off makes
  # +-tiny; Adam turns that into a step of up to the learning rate either way. Such leaves (an
  # Adam mean below 1e-6 of the largest; measured: <= 2e-7, every other leaf >= 4e-5) may
  # differ by twice the learning rates summed over the steps. Every other leaf must move by the
  # same update: measured within 5e-5 of the update's norm; allowed 1e-3; a run that did not
  # train differs by 1.
  config = tiny_config(synthetic_tiny_dir)
  schedule = step_lib.learning_rate_schedule(config.train.learning_rate,
                                             config.train.warmup_steps)
  noise_atol = 2 * sum(float(schedule(t)) for t in range(3))
  mu_scale = max(np.abs(m).max() for m in one["adam_mu"].values())
  noise = {p for p, m in one["adam_mu"].items() if np.abs(m).max() < 1e-6 * mu_scale}
  assert 0 < len(noise) < len(one["params"]) / 2, sorted(noise)
  for path, p1 in one["params"].items():
    p0, p2 = one["init_params"][path], two["params"][path]
    if path in noise:
      np.testing.assert_allclose(p1, p2, rtol=0, atol=noise_atol, err_msg=path)
      continue
    update1, update2 = p1 - p0, p2 - p0
    assert np.linalg.norm(update1) > 1e-4, path  # it trained
    assert np.linalg.norm(update1 - update2) <= 1e-3 * np.linalg.norm(update1), path
  # BatchNorm statistics: the running means see those biases too (measured: within 4% of their
  # movement); allowed 10%; statistics that did not move differ by 100%.
  for path, b1 in one["batch_stats"].items():
    b0, b2 = one["init_batch_stats"][path], two["batch_stats"][path]
    assert np.linalg.norm(b1 - b0) > 5e-4, path  # measured: >= 2e-3
    assert np.linalg.norm(b1 - b2) <= 0.1 * np.linalg.norm(b1 - b0), path


def test_evaluate_mode_restores_without_optimizer_state(straight_run, tmp_path):
  config, workdir, _ = straight_run
  config = tiny_config(config.data.data_dir)
  config.eval.evaluators = ("probes",)
  data = load_data(config)
  results = evaluate.evaluate(config, workdir, data)
  assert results["settings"]["step"] == 30
  assert os.path.exists(os.path.join(workdir, "eval", "probes.json"))
  # A workdir without checkpoints, a missing step, a checkpoint of another model shape.
  with pytest.raises(FileNotFoundError, match="No checkpoint in .*Train first"):
    evaluate.evaluate(config, str(tmp_path), data)
  with pytest.raises(ValueError, match=r"No checkpoint of step 7 .*available steps: \[.*30\]"):
    evaluate.evaluate(config, workdir, data, step=7)
  other = tiny_config(config.data.data_dir)
  other.model.latent_dim = 8
  with pytest.raises(fingerprint.MismatchError,
                     match="model.latent_dim: 16 in the checkpoint, 8 now"):
    evaluate.evaluate(other, workdir, data)


def test_plateau_lowers_the_learning_rate_after_patience_evaluations():
  plateau = train.Plateau()
  losses = [10.0, 9.0, 9.5, 9.2, 9.1, 8.0, 8.5, 8.6]
  drops = [plateau.update(x, patience=3, factor=0.5, min_scale=0.2) for x in losses]
  assert drops == [False, False, False, False, True, False, False, False]
  assert plateau.scale == 0.5 and plateau.best == 8.0 and plateau.bad_evals == 2
  for _ in range(12):
    plateau.update(9.0, patience=3, factor=0.5, min_scale=0.2)
  assert plateau.scale == 0.2  # never below min_scale


def test_plateau_factor_one_is_no_schedule():
  # configs/default.py: train.plateau_factor = 1.0, the reference's constant learning rate.
  plateau = train.Plateau()
  drops = [plateau.update(x, patience=2, factor=1.0, min_scale=1e-3)
           for x in [5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 4.0]]
  assert not any(drops) and plateau.scale == 1.0 and plateau.best == 4.0
  config = tiny_config("/nonexistent")
  config.train.plateau_factor = 1.5
  with pytest.raises(ValueError, match=r"plateau_factor must be in \(0, 1\]"):
    step_lib.validate_config(config, num_devices=1)


def test_set_plateau_scale_changes_only_the_factor(straight_run):
  _, _, state = straight_run
  lowered = step_lib.set_plateau_scale(state, 0.25)
  assert float(step_lib.plateau_scale(lowered.opt_state)) == 0.25
  assert float(step_lib.plateau_scale(state.opt_state)) == 1.0
  assert (step_lib.plateau_scale(lowered.opt_state).sharding ==
          step_lib.plateau_scale(state.opt_state).sharding)  # the jitted step does not recompile
  assert_trees_equal(jax.device_get(lowered.opt_state[0]), jax.device_get(state.opt_state[0]))
