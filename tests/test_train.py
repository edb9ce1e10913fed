"""Training: the loss falls, checkpoints round-trip, divergence stops, two devices equal one.

Killed and preempted runs: tests/test_kill.py (main.py for real) and
tests/test_checkpoint_safety.py (damaged checkpoints, errors inside the loop)."""

import json
import os
import shutil

from clu import metric_writers
from conftest import (
  TWO_DEVICE_STEPS,
  assert_trees_equal,
  load_data,
  loop_initial_state,
  restored_state_tree,
  state_tree,
  tiny_config,
  train_run,
  two_device_config,
)
import jax
import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import tfds_source
from mopoe_jax.evaluation import evaluate
from mopoe_jax.platform import sharding
from mopoe_jax.training import checkpointing, fingerprint, programs
from mopoe_jax.training import loop as train
from mopoe_jax.training import step as step_lib
from mopoe_jax.vae import model as model_lib


def _tags(workdir) -> set:
  """Every tag written by clu under ``workdir`` (scalars and images)."""
  return {
    v.tag
    for root, _, files in os.walk(workdir)
    for f in files
    if f.startswith("events.out.tfevents")
    for event in tf.compat.v1.train.summary_iterator(os.path.join(root, f))
    for v in event.summary.value
  }


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


@pytest.mark.slow  # 48 steps (4 epochs) through the loop
def test_loss_falls_and_tensorboard_has_the_metrics(synthetic_tiny_dir, tmp_path):
  log_every = 6
  config = tiny_config(
    synthetic_tiny_dir,
    num_steps=8 * log_every,
    log_every_steps=log_every,
    eval_every_steps=4 * log_every,
    checkpoint_every_steps=8 * log_every,
    profile_steps=2,
  )
  train_run(config, str(tmp_path))
  losses = [v for _, v in _scalars(str(tmp_path), "train_loss")]
  assert len(losses) == 8
  assert losses[-1] < 0.8 * losses[0], losses
  evals = _scalars(str(tmp_path), "eval_loss")
  assert [s for s, _ in evals] == [24, 48] and evals[1][1] < evals[0][1]
  for tag in (
    "train_nll/frontal",
    "train_nll/text",
    "train_kl_subset/frontal+lateral+text",
    "train_learning_rate",
    "train_steps_per_second",
    "eval_nll/lateral",
    "train_examples_per_second",
    "train_data_wait_share",
    "train_model_tflops_per_device",
  ):
    assert _scalars(str(tmp_path), tag), tag
  # The CPU reports no memory and has no peak FLOP/s: those figures are left out, not invented.
  assert not {"train_mfu", "train_device_memory_gib"} & _tags(str(tmp_path))
  rates = dict(_scalars(str(tmp_path), "train_steps_per_second"))
  examples = dict(_scalars(str(tmp_path), "train_examples_per_second"))
  assert all(examples[s] == pytest.approx(32 * rates[s], rel=1e-5) for s in rates)
  assert all(0 <= v <= 1 for _, v in _scalars(str(tmp_path), "train_data_wait_share"))
  # The profile of steps 3-4 (profile_steps=2), where TensorBoard's Profile tab looks for it.
  traces = list((tmp_path / "plugins" / "profile").glob("*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0, traces
  assert {"generation/frontal", "generation/lateral"} <= _tags(str(tmp_path))
  # The logged learning rate is the one the optimizer applied: the warm-up's mean over each
  # logged interval (the first includes the 5 warm-up steps).
  schedule = step_lib.learning_rate_schedule(config.train.learning_rate, config.train.warmup_steps)
  logged = _scalars(str(tmp_path), "train_learning_rate")
  expected = [np.mean([float(schedule(t)) for t in range(s - log_every, s)]) for s, _ in logged]
  np.testing.assert_allclose([v for _, v in logged], expected, rtol=1e-5)
  assert logged[0][1] < logged[1][1]


def test_checkpoint_round_trip(straight_run):
  config, workdir, state = straight_run
  manager = checkpointing.create_manager(workdir, read_only=True)
  assert manager.latest_step() == 30
  # Retention: the newest keep_checkpoints (2) plus the best by eval loss.
  evals = dict(_scalars(workdir, "eval_loss"))
  best = min(evals, key=evals.get)
  assert set(manager.all_steps()) == {20, 30, best}
  abstract = jax.tree.map(
    lambda x: (
      jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) if isinstance(x, jax.Array) else x
    ),
    state,
  )
  restored = checkpointing.restore_train_state(manager, abstract, 30)
  assert_trees_equal(state_tree(restored), state_tree(state))
  meta = checkpointing.read_meta(manager, 30)
  data = load_data(config)
  assert meta["data_position"] == 30 and meta["eval_due"]  # saved before its evaluation
  assert meta["fields"] == fingerprint.fields(
    config, dataset=data.name, vocab_size=len(data.vocab), process_count=1
  )
  # Evaluation restores parameters and batch statistics without the optimizer state.
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  abstract_vars = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
  only_model = checkpointing.restore_model_variables(manager, abstract_vars, 30)
  assert_trees_equal(jax.device_get(only_model), jax.device_get(variables))


def test_a_second_run_in_the_same_process_compiles_nothing(straight_run, tmp_path):
  """A resumed run in the process that ran the straight run lowers and compiles none of the
  loop's programs again (compilation.jitted_once), and still ends where the straight run ended.

  Tracing is left out of the check: JAX's in-memory trace caches are bounded, and the whole
  suite, which makes thousands of programs in one process, has evicted these three entries
  before this test runs (seen with jax 0.10 and 0.12; run alone, the resumed run traces nothing
  either). A retrace that hits the lowering and compile caches costs a second on CPU."""
  config, workdir, straight = straight_run
  shutil.copytree(
    os.path.join(checkpointing.checkpoint_dir(workdir), "20"),
    os.path.join(checkpointing.checkpoint_dir(str(tmp_path)), "20"),
  )
  seen, listening = [], [True]

  def listener(event, duration, **kwargs):
    del duration
    if listening[0] and event.startswith("/jax/core/compile/"):
      seen.append((event.rsplit("/", 1)[-1], kwargs.get("fun_name", "")))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    resumed = train_run(config, str(tmp_path))
  finally:
    listening[0] = False
  loop_programs = ("train_step", "eval_step", "init_state", "_generate")
  assert not [
    s for s in seen if any(p in s[1] for p in loop_programs) and s[0] != "jaxpr_trace_duration"
  ], seen
  assert_trees_equal(state_tree(resumed), state_tree(straight))


def test_a_resumed_runs_pending_evaluation_is_not_counted_as_training_time(
  straight_run, tmp_path, monkeypatch
):
  """Step 20's checkpoint was written before its evaluation, so the resumed run evaluates
  first. That evaluation, made to take 1000 s of train.py's clock, must not enter the first
  logged steps/s (which, with it, would read below 0.01)."""
  config, workdir, _ = straight_run
  shutil.copytree(
    os.path.join(checkpointing.checkpoint_dir(workdir), "20"),
    os.path.join(checkpointing.checkpoint_dir(str(tmp_path)), "20"),
  )
  clock = [1e6]

  class Clock:  # train.py's view of the time module: a ms per reading, 1000 s per evaluation
    @staticmethod
    def time():
      clock[0] += 1e-3
      return clock[0]

    perf_counter = time

  real_evaluate_loss = train.evaluate_loss

  def slow_evaluate_loss(*args, **kwargs):
    clock[0] += 1000.0
    return real_evaluate_loss(*args, **kwargs)

  monkeypatch.setattr(train, "time", Clock)
  monkeypatch.setattr(train, "evaluate_loss", slow_evaluate_loss)
  train_run(config, str(tmp_path))
  rates = dict(_scalars(str(tmp_path), "train_steps_per_second"))
  assert sorted(rates) == [25, 30]
  assert rates[25] > 1.0, rates  # 5 steps in a few fake milliseconds, not in 1000 s


def test_non_finite_loss_stops_with_the_step(straight_run, tmp_path, monkeypatch):
  """Resumed from step 20 with an infinite learning-rate factor (it lives in the optimizer
  state, so the step program is the straight run's): step 21's update makes the parameters
  infinite, the loss of the next step is not finite, and training stops naming it."""
  config, workdir, _ = straight_run
  shutil.copytree(
    os.path.join(checkpointing.checkpoint_dir(workdir), "20"),
    os.path.join(checkpointing.checkpoint_dir(str(tmp_path)), "20"),
  )
  real_restore = checkpointing.restore_train_state
  monkeypatch.setattr(
    checkpointing,
    "restore_train_state",
    lambda *args, **kwargs: step_lib.set_plateau_scale(real_restore(*args, **kwargs), float("inf")),
  )
  with pytest.raises(
    train.NonFiniteError,
    match=r"not finite at step 21; the last good "
    r"checkpoint is step 20 in .*Lower --config.train.learning_rate",
  ):
    train_run(config, str(tmp_path))
  assert checkpointing.create_manager(str(tmp_path), read_only=True).all_steps() == [20]


def test_bad_configs_fail_before_compiling(synthetic_tiny_dir, tmp_path):
  config = tiny_config(synthetic_tiny_dir, batch_size=5)
  with pytest.raises(ValueError, match="batch_size=5 is smaller than the 7 subsets"):
    step_lib.validate_config(config, 1)
  config = tiny_config(synthetic_tiny_dir, batch_size=33)
  with pytest.raises(ValueError, match="global batch 33 does not divide over 2 devices"):
    step_lib.validate_config(config, 2)
  config = tiny_config(synthetic_tiny_dir, image_grid_studies=3)
  with pytest.raises(
    ValueError,
    match=r"image_grid_studies=3 does not divide over the 2 devices"
    r".*--config.train.image_grid_studies=4",
  ):
    step_lib.validate_config(config, 2)
  config = tiny_config(synthetic_tiny_dir, image_grid_studies=-1)
  with pytest.raises(ValueError, match=r"image_grid_studies must be >= 0 \(0: no image grids\)"):
    step_lib.validate_config(config, 1)
  config = tiny_config(synthetic_tiny_dir, process_id=1, multihost="false")
  with pytest.raises(
    ValueError,
    match=r"config.train.process_id set but config.train.multihost "
    r"is false; leave it 'auto'",
  ):
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
    tfds_source.load(config.data)
  with pytest.raises(AttributeError):
    tiny_config(synthetic_tiny_dir).lock().train.batch_sise = 3  # unknown field


def _by_path(tree) -> dict:
  return {
    jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)
  }


@pytest.mark.timeout(700)
def test_two_devices_match_one_device(two_device_run, synthetic_tiny_dir, tmp_path):
  """4 data-parallel steps over 2 virtual CPU devices (`two_device_run`, a subprocess) equal the
  same 4 steps on this process's one device, fed the same global batches (tests/two_shards.py).
  """
  from two_shards import TwoShards  # pylint: disable=g-import-not-at-top

  config = two_device_config(synthetic_tiny_dir, num_steps=TWO_DEVICE_STEPS)
  one_dir = str(tmp_path / "one_device")
  writer = metric_writers.create_default_writer(one_dir)
  data = load_data(config)
  train.train_and_evaluate(config, one_dir, TwoShards(data), writer)
  writer.close()
  two_dir = two_device_run.workdir()
  # train.image_grid_studies = 0 (conftest.TWO_DEVICE_TRAIN): no image grids were made.
  assert not [t for t in _tags(one_dir) | _tags(two_dir) if t.startswith("generation/")]
  # The initial state, as train_and_evaluate makes it (the same program, already compiled).
  model = model_lib.create_model(config, len(data.vocab))
  init = jax.device_get(loop_initial_state(config, model))
  one, two = (restored_state_tree(config, d, TWO_DEVICE_STEPS) for d in (one_dir, two_dir))
  assert jax.tree.structure(one) == jax.tree.structure(two)

  # Loss, gradient norm and KL, each the mean of steps 1-2 and of steps 3-4 (the later ones see
  # the updated parameters).
  for tag in ("train_loss", "train_grad_norm", "train_kl"):
    a, b = _scalars(one_dir, tag), _scalars(two_dir, tag)
    assert [s for s, _ in a] == [s for s, _ in b] == [2, 4], (tag, a, b)
    np.testing.assert_allclose([v for _, v in a], [v for _, v in b], rtol=2e-4, err_msg=tag)
  # Parameters. A bias feeding BatchNorm has an exactly zero gradient, which round-off makes
  # +-tiny; Adam turns that into a step of up to the learning rate either way. Such leaves (an
  # Adam mean below 1e-6 of the largest; measured: 18 leaves, <= 8e-8, every other leaf >=
  # 2e-3) may differ by twice the learning rates summed over the steps. Every other leaf must
  # move by the same update from the same start, up to round-off: measured over the 89 other
  # leaves on jax 0.10 and 0.12, the median within 7e-7 of the update's norm, the worst 3.1e-5
  # (a BatchNorm scale). Allowed: the median 1e-5, every leaf 1e-3; a run that did not train
  # (or started elsewhere) differs by about 1 in every leaf. (With the frontal view as well,
  # round-off that Adam's first steps amplify where a gradient nearly cancels reached 1.8e-2 in
  # the image decoder's last block.)
  schedule = step_lib.learning_rate_schedule(config.train.learning_rate, config.train.warmup_steps)
  noise_atol = 2 * sum(float(schedule(t)) for t in range(TWO_DEVICE_STEPS))
  adam_mu = _by_path(one["opt_state"][0].inner_state[0].mu)
  mu_scale = max(np.abs(m).max() for m in adam_mu.values())
  noise = {p for p, m in adam_mu.items() if np.abs(m).max() < 1e-6 * mu_scale}
  params0, params1, params2 = (_by_path(t) for t in (init.params, one["params"], two["params"]))
  assert params1.keys() == params2.keys() == params0.keys() == adam_mu.keys()
  assert 0 < len(noise) < len(params1) / 2, sorted(noise)
  relative = {}
  for path, p1 in params1.items():
    p0, p2 = params0[path], params2[path]
    if path in noise:
      np.testing.assert_allclose(p1, p2, rtol=0, atol=noise_atol, err_msg=path)
      continue
    update1, update2 = p1 - p0, p2 - p0
    assert np.linalg.norm(update1) > 1e-4, path  # it trained
    relative[path] = np.linalg.norm(update1 - update2) / np.linalg.norm(update1)
  worst = sorted(relative.items(), key=lambda kv: -kv[1])[:5]
  assert np.median(list(relative.values())) <= 1e-5, worst
  assert worst[0][1] <= 1e-3, worst
  # BatchNorm statistics: the running means see those biases too (measured over these 4 steps:
  # up to 1.9% of their movement, in the report decoder's blocks); allowed 5%; statistics that
  # did not move differ by 100%.
  stats0, stats1, stats2 = (
    _by_path(t) for t in (init.batch_stats, one["batch_stats"], two["batch_stats"])
  )
  assert stats1.keys() == stats2.keys() == stats0.keys() and stats1
  for path, b1 in stats1.items():
    b0, b2 = stats0[path], stats2[path]
    assert np.linalg.norm(b1 - b0) > 5e-4, path  # measured: >= 2.7e-2
    assert np.linalg.norm(b1 - b2) <= 0.05 * np.linalg.norm(b1 - b0), path


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
  with pytest.raises(
    fingerprint.MismatchError, match="model.latent_dim: 16 in the checkpoint, 8 now"
  ):
    evaluate.evaluate(other, workdir, data)


def test_the_stored_steps_key_follows_the_config_with_only_loop_fields_left_out(tmp_path):
  """A field added to the optimizer (or any other not known to steer only the loop) changes the
  key of the stored train step, so a restart traces it again instead of loading a stale one."""
  base = tiny_config("/nowhere")
  loop_only = tiny_config("/elsewhere", num_steps=7, log_every_steps=3, seed=5, profile_steps=4)
  loop_only.eval.probes.repeats = 1
  changed = tiny_config("/nowhere", b2=0.99)
  added = tiny_config("/nowhere")
  added.train.weight_decay = 1e-4  # a field the optimizer would read
  settings = [programs.trace_settings(c) for c in (base, loop_only, changed, added)]
  assert settings[1] == settings[0]
  assert len({settings[0], settings[2], settings[3]}) == 3

  jax.config.update("jax_compilation_cache_dir", str(tmp_path))  # stored_programs_dir under it
  try:
    mesh = sharding.make_data_mesh()
    paths = []
    for config in (base, added):
      model = model_lib.create_model(config, 40)
      step_config = step_lib.StepConfig.from_config(config, model, pad_id=1)
      init_jit = programs.init_program(config, model, mesh)
      abstract = sharding.abstract(
        jax.eval_shape(init_jit, jax.random.PRNGKey(0)), sharding.replicated(mesh)
      )
      batch = sharding.abstract(model_lib.dummy_batch(config, 32), sharding.batch_sharded(mesh))
      paths.append(programs.train_program(config, model, step_config, mesh, abstract, batch).path)
  finally:
    jax.config.update("jax_compilation_cache_dir", os.environ["MOPOE_TEST_XLA_CACHE"])
  assert paths[0] != paths[1] and all(p.startswith(str(tmp_path)) for p in paths)


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
  drops = [
    plateau.update(x, patience=2, factor=1.0, min_scale=1e-3)
    for x in [5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 4.0]
  ]
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
  assert (
    step_lib.plateau_scale(lowered.opt_state).sharding
    == step_lib.plateau_scale(state.opt_state).sharding
  )  # the jitted step does not recompile
  assert_trees_equal(jax.device_get(lowered.opt_state[0]), jax.device_get(state.opt_state[0]))


def test_a_resumed_run_does_not_repeat_a_finished_evaluation(straight_run, tmp_path, monkeypatch):
  """Step 20's checkpoint was written before its evaluation; when that evaluation finished
  (loop_evaluated.json, as the straight run wrote it then), the resumed run applies its recorded
  loss to the plateau tracker instead of evaluating again, and still ends as the straight run."""
  config, workdir, straight = straight_run
  shutil.copytree(
    os.path.join(checkpointing.checkpoint_dir(workdir), "20"),
    os.path.join(checkpointing.checkpoint_dir(str(tmp_path)), "20"),
  )
  loss_at_20 = dict(_scalars(workdir, "eval_loss"))[20]
  with open(tmp_path / train.EVALUATED_FILE, "w") as f:
    json.dump({"step": 20, "eval": {"loss": loss_at_20}}, f)
  evaluated = []
  real_evaluate_loss = train.evaluate_loss

  def counting_evaluate_loss(*args, **kwargs):
    evaluated.append(args[1].step)
    return real_evaluate_loss(*args, **kwargs)

  monkeypatch.setattr(train, "evaluate_loss", counting_evaluate_loss)
  resumed = train_run(config, str(tmp_path))
  assert [int(s) for s in evaluated] == [30]  # step 20's evaluation was not run again
  assert_trees_equal(state_tree(resumed), state_tree(straight))
  meta = checkpointing.read_meta(checkpointing.create_manager(str(tmp_path), read_only=True), 30)
  straight_meta = checkpointing.read_meta(checkpointing.create_manager(workdir, read_only=True), 30)
  # The recorded loss went through TensorBoard's float32 here; the run records it exactly.
  assert meta["plateau_best"] == pytest.approx(straight_meta["plateau_best"], rel=1e-6)
  assert meta["plateau_best_step"] == straight_meta["plateau_best_step"]
  with open(tmp_path / train.EVALUATED_FILE) as f:
    assert json.load(f)["step"] == 30


def test_a_rerun_after_the_last_step_evaluates_what_is_due_and_compiles_no_train_step(
  straight_run, tmp_path, monkeypatch
):
  """Resumed from the last step's checkpoint (step 30), nothing is left to train: the run
  neither compiles the train step nor builds the training data; it runs the evaluation that the
  checkpoint says is due, and a second rerun (that evaluation recorded as finished) compiles
  neither step."""
  config, workdir, straight = straight_run
  shutil.copytree(
    os.path.join(checkpointing.checkpoint_dir(workdir), "30"),
    os.path.join(checkpointing.checkpoint_dir(str(tmp_path)), "30"),
  )
  compiled, evaluated, eval_programs = [], [], []
  real_compile_step, real_eval_step = programs.Programs.compile_step, programs.Programs.eval_step
  real_evaluate_loss = train.evaluate_loss

  def counting_compile_step(self, step_rng):
    compiled.append(step_rng)
    return real_compile_step(self, step_rng)

  def counting_eval_step(self, state, batch_size):
    eval_programs.append(batch_size)
    return real_eval_step(self, state, batch_size)

  def counting_evaluate_loss(*args, **kwargs):
    evaluated.append(int(args[1].step))
    return real_evaluate_loss(*args, **kwargs)

  def no_train_batches(*args, **kwargs):
    raise AssertionError("the training data was built")

  monkeypatch.setattr(programs.Programs, "compile_step", counting_compile_step)
  monkeypatch.setattr(programs.Programs, "eval_step", counting_eval_step)
  monkeypatch.setattr(train, "evaluate_loss", counting_evaluate_loss)
  monkeypatch.setattr(tfds_source.TfdsData, "train_batches", no_train_batches)
  resumed = train_run(config, str(tmp_path))
  assert (compiled, evaluated, eval_programs) == ([], [30], [config.train.batch_size])
  assert_trees_equal(state_tree(resumed), state_tree(straight))
  with open(tmp_path / train.EVALUATED_FILE) as f:
    assert json.load(f)["step"] == 30

  again = train_run(config, str(tmp_path))
  assert (compiled, evaluated, eval_programs) == ([], [30], [config.train.batch_size])
  assert_trees_equal(state_tree(again), state_tree(straight))
