"""Convolutions: the CPU rewrites against XLA's definitions, "xla" against "cpu" everywhere the
networks convolve, the same parameters under both, "auto" choices per backend, and batch
statistics over the rows in which a modality is present."""

import chex
from conftest import jaxpr_equations, small_config
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default as default_config
from configs import tiny as tiny_config
from mopoe_jax.vae import cpu_conv, layers, networks
from mopoe_jax.vae import model as model_lib

# ---------------------------------------------------------------------------------------------
# The CPU rewrites (mopoe_jax.vae.cpu_conv) against lax and the definition.


def _reference_conv_transpose(x, w, s, p, op):
  """PyTorch's definition through lax.conv_transpose (kernel [*k, C_in, C_out])."""
  nd = x.ndim - 2
  spatial = "HW"[:nd]
  pads = [(k - 1 - pp, k - 1 - pp + o) for k, pp, o in zip(w.shape[:nd], p, op)]
  return jax.lax.conv_transpose(
    x,
    w,
    s,
    pads,
    dimension_numbers=("N" + spatial + "C", spatial + "OI", "N" + spatial + "C"),
    transpose_kernel=True,
  )


def _naive_conv_transpose(x, w, s, p, op):
  """The definition itself: out[s*i - p + t] += x[i] @ w[t] (numpy, small inputs only)."""
  nd = x.ndim - 2
  ks = w.shape[:nd]
  outs = [(n - 1) * ss - 2 * pp + k + o for n, ss, pp, k, o in zip(x.shape[1:-1], s, p, ks, op)]
  y = np.zeros((x.shape[0], *outs, w.shape[-1]))
  for idx in np.ndindex(*x.shape[1:-1]):
    for t in np.ndindex(*ks):
      pos = [i * ss - pp + tt for i, ss, pp, tt in zip(idx, s, p, t)]
      if all(0 <= q < o for q, o in zip(pos, outs)):
        y[(slice(None), *pos)] += x[(slice(None), *idx)] @ w[t]
  return y


def _value_and_grads(f, x, w, seed: int):
  """``f(x, w)`` and the gradients of ``sum(f(x, w) * cot)`` for x and w, from one jitted
  program (eager dispatch would compile every operation on its own); ``cot`` is drawn from
  ``seed``, so two ``f`` of one output shape get the same one."""
  shape = jax.eval_shape(f, x, w).shape
  cot = jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)

  @jax.jit
  def both(a, b):
    y, vjp = jax.vjp(f, a, b)
    return y, vjp(cot)

  return both(x, w)


CASES = [  # (k, s, p, output_padding, n): every transposed convolution of the networks
  (4, 2, 1, 0, 5),
  (3, 2, 1, 1, 4),
  (4, 1, 0, 0, 1),
  (1, 1, 0, 0, 3),
  (5, 3, 1, 0, 3),
]


@pytest.mark.parametrize("c_out", [1, 8])  # 2-D: one gathered convolution / one per phase
@pytest.mark.parametrize("nd", [1, 2])
@pytest.mark.parametrize("k,s,p,op,n", CASES)
def test_cpu_conv_transpose_equals_reference_values_and_gradients(nd, k, s, p, op, n, c_out):
  rng = np.random.default_rng(k * 10 + s)
  x = jnp.asarray(rng.normal(size=(2, *(n,) * nd, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(*(k,) * nd, 3, c_out)), jnp.float32)
  args = ((s,) * nd, (p,) * nd, (op,) * nd)
  fast, g_fast = _value_and_grads(lambda a, b: cpu_conv.conv_transpose(a, b, *args), x, w, k)
  ref, g_ref = _value_and_grads(lambda a, b: _reference_conv_transpose(a, b, *args), x, w, k)
  np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    fast,
    _naive_conv_transpose(np.asarray(x, np.float64), np.asarray(w, np.float64), *args),
    rtol=1e-4,
    atol=1e-4,
  )
  for a, b in zip(g_fast, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
  "shape,k,s,p",
  [
    ((2, 9, 3), 4, 2, 1),  # 1-D (text encoder): patches + dot
    ((2, 4, 4, 3), 4, 2, 1),  # 2-D, 2 x 2 x 2 output rows: patches + dot
    ((16, 8, 8, 3), 3, 2, 1),  # 2-D, 16 x 4 x 4 = 256 rows: patches + dot
    ((8, 24, 24, 3), 4, 2, 0),  # 2-D, 968 rows, k - 2p + op != s: lax convolution
    ((8, 16, 16, 3), 4, 2, 1),  # 2-D, 512 rows: input gradient as phase-form conv_transpose
    ((8, 18, 18, 3), 3, 2, 1),  # 2-D, k3 s2 p1 (output_padding 1): phase-form input gradient
    ((8, 17, 17, 3), 3, 2, 1),  # 2-D, odd size (k - 2p + op != s): lax convolution
    ((2, 5, 3), 1, 1, 0),
  ],
)
def test_cpu_conv_equals_lax_convolution_values_and_gradients(shape, k, s, p):
  nd = len(shape) - 2
  rng = np.random.default_rng(sum(shape) + k)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=(*(k,) * nd, 3, 5)), jnp.float32)
  args = ((s,) * nd, [(p, p)] * nd)
  spatial = "HW"[:nd]
  dn = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
  fast, g_fast = _value_and_grads(lambda a, b: cpu_conv.conv(a, b, *args), x, w, k)
  ref, g_ref = _value_and_grads(
    lambda a, b: jax.lax.conv_general_dilated(a, b, *args, dimension_numbers=dn), x, w, k
  )
  np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-5)
  for a, b in zip(g_fast, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_cpu_strided_conv_input_gradient_has_no_dilated_convolution():
  """The encoders' k4 s2 p1 convolutions: XLA's input gradient would dilate the output gradient
  (lhs_dilation 2, four times the FLOPs); ours runs only stride-1, undilated convolutions."""
  x = jnp.ones((8, 16, 16, 3))
  w = jnp.ones((4, 4, 3, 5))
  jaxpr = jax.make_jaxpr(jax.grad(lambda a: jnp.sum(cpu_conv.conv(a, w, (2, 2), [(1, 1)] * 2))))(x)
  convs = [e for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
  assert convs and all(c.params["lhs_dilation"] == (1, 1) for c in convs)


@pytest.mark.parametrize("impl", layers.CONV_IMPLS)
def test_conv_module_is_a_drop_in_for_nn_conv(impl):
  """Same parameter names, shapes, initial values and outputs as flax's nn.Conv."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6, 3)), jnp.float32)
  kwargs = dict(features=4, kernel_size=(3, 3), strides=(2, 2), padding=[(1, 1), (1, 1)])
  ours, theirs = layers.Conv(**kwargs, conv_impl=impl), nn.Conv(**kwargs)
  v_ours = ours.init(jax.random.key(1), x)
  v_theirs = theirs.init(jax.random.key(1), x)
  chex.assert_trees_all_close(v_ours, v_theirs)
  np.testing.assert_allclose(ours.apply(v_ours, x), theirs.apply(v_theirs, x), rtol=1e-5, atol=1e-5)


def test_cpu_conv_transpose_uses_the_phase_form():
  """Strided transposed convolutions: one stride-1 2x2 convolution per phase, no lhs dilation
  and no zero taps; 1-D ones are dots."""
  x = jnp.ones((1, 4, 4, 8))
  w = jnp.ones((4, 4, 8, 8))
  jaxpr = jax.make_jaxpr(lambda a: cpu_conv.conv_transpose(a, w, (2, 2), (1, 1)))(x)
  convs = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
  assert len(convs) == 4
  for c in convs:
    assert c.params["lhs_dilation"] == (1, 1) and c.invars[1].aval.shape[:2] == (2, 2)
  jaxpr = jax.make_jaxpr(lambda a: cpu_conv.conv_transpose(a, w[0], (2,), (1,)))(x[:, 0])
  assert not [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
  # One output channel (the last decoder layer): all phases in one convolution to s^2 channels.
  jaxpr = jax.make_jaxpr(
    lambda a: cpu_conv.conv_transpose(a, w[:3, :3, :, :1], (2, 2), (1, 1), (1, 1))
  )(x)
  convs = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
  assert len(convs) == 1 and convs[0].params["lhs_dilation"] == (1, 1)
  assert convs[0].invars[1].aval.shape == (2, 2, 8, 4)


# ---------------------------------------------------------------------------------------------
# "xla" and "cpu" compute the same values and gradients wherever the networks convolve.

CONV_CASES = [  # (x shape, k, s, p): the networks' convolutions (and both CPU paths of each)
  ((2, 8, 8, 1), 3, 2, 1),  # image encoder stem (no bias): patches + dot
  ((8, 16, 16, 3), 3, 2, 1),  # stem, 512 rows: phase-form input gradient (custom VJP)
  ((2, 8, 8, 3), 4, 2, 1),  # image block k4 s2 p1: patches + dot
  ((8, 16, 16, 3), 4, 2, 1),  # k4 s2 p1, 512 rows: phase-form input gradient
  ((2, 4, 4, 3), 4, 2, 0),  # last image block, 4x4 -> 1x1
  ((8, 18, 18, 3), 4, 2, 0),  # k4 s2 p0, 512 rows: lax convolution
  ((2, 4, 4, 3), 1, 1, 0),  # image 1x1 convolution: patches + dot
  ((8, 12, 12, 3), 1, 1, 0),  # 1x1, 1,152 rows: lax convolution
  ((2, 8, 3), 4, 2, 1),  # text conv and blocks, 1-D k4 s2 p1
  ((2, 5, 3), 1, 1, 0),
]  # text 1x1 convolution
TRANSPOSE_CASES = [  # (x shape, k, s, p, output_padding, C_out)
  ((2, 1, 1, 3), 4, 1, 0, 0, 5),  # image decoder's first block, 1x1 -> 4x4
  ((2, 1, 3), 4, 1, 0, 0, 5),  # text decoder's first block, length 1 -> 4
  ((2, 4, 4, 3), 4, 2, 1, 0, 8),  # image decoder blocks k4 s2 p1 (one conv per phase)
  ((2, 5, 3), 4, 2, 1, 0, 5),  # text decoder blocks
  ((2, 4, 4, 3), 3, 2, 1, 1, 1),  # image decoder's last layer to 1 channel (gathered)
  ((2, 5, 3), 1, 1, 0, 0, 5),
]  # text decoder's 1x1 convolutions (transposed)


def _values_and_gradients(fn, x, w, rng):
  """fn under "xla" and "cpu": outputs and both gradients of <fn(x, w), cot>, in one jit."""
  cot = jnp.asarray(rng.normal(size=jax.eval_shape(lambda: fn(x, w, "xla")).shape), jnp.float32)

  @jax.jit
  def run(x, w):
    out = {}
    for impl in layers.CONV_IMPLS:
      y, vjp = jax.vjp(lambda a, b: fn(a, b, impl), x, w)
      out[impl] = (y, *vjp(cot))
    return out

  return run(x, w)


def _assert_impls_agree(out):
  # float32 sums of <= 48 products (values) and <= a few hundred (gradients) of N(0, 1) terms.
  for name, a, b, tol in zip(
    ("value", "input gradient", "kernel gradient"), out["xla"], out["cpu"], (1e-5, 1e-4, 1e-4)
  ):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=name)


@pytest.mark.parametrize("shape,k,s,p", CONV_CASES)
def test_xla_and_cpu_convolutions_agree(shape, k, s, p):
  nd = len(shape) - 2
  rng = np.random.default_rng(sum(shape) + k + p)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=(*(k,) * nd, shape[-1], 5)), jnp.float32)
  fn = lambda a, b, impl: layers.conv(a, b, (s,) * nd, [(p, p)] * nd, impl=impl)
  _assert_impls_agree(_values_and_gradients(fn, x, w, rng))


@pytest.mark.parametrize("shape,k,s,p,op,c_out", TRANSPOSE_CASES)
def test_xla_and_cpu_transposed_convolutions_agree(shape, k, s, p, op, c_out):
  nd = len(shape) - 2
  rng = np.random.default_rng(sum(shape) + k + p + c_out)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=(*(k,) * nd, shape[-1], c_out)), jnp.float32)
  fn = lambda a, b, impl: layers.conv_transpose(a, b, (s,) * nd, (p,) * nd, (op,) * nd, impl=impl)
  _assert_impls_agree(_values_and_gradients(fn, x, w, rng))


@pytest.mark.parametrize("network", ["image_encoder", "image_decoder"])
def test_xla_runs_native_convolutions_only(network):
  """ "xla": no custom VJP, no patches + dot (every dot_general is a Dense layer's, rank 2), and
  transposed convolutions as input-dilated convolutions; "cpu" has the rewrites."""
  c = tiny_config.get_config().model
  if network == "image_encoder":
    make = lambda impl: networks.ImageEncoder(
      c.image_encoder_widths, c.latent_dim, 0.0, conv_impl=impl
    )
    x = jnp.zeros((2, 32, 32, 1))
  else:
    make = lambda impl: networks.ImageDecoder(c.image_decoder_widths, 0.0, conv_impl=impl)
    x = jnp.zeros((2, c.latent_dim))
  variables = jax.eval_shape(lambda: make("xla").init(jax.random.key(0), x, False))
  counts = {}
  for impl in layers.CONV_IMPLS:
    module = make(impl)

    def loss(v, a, module=module):
      y = module.apply(v, a, True, mutable=["batch_stats"])[0]
      return sum(jnp.sum(t) for t in jax.tree.leaves(y))

    forward = jaxpr_equations(jax.make_jaxpr(loss)(variables, x))
    backward = jaxpr_equations(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(variables, x))
    counts[impl] = {
      "custom_vjp": sum("custom_vjp" in e.primitive.name for e in forward + backward),
      "conv": sum(e.primitive.name == "conv_general_dilated" for e in backward),
      "dilated_conv": sum(
        e.primitive.name == "conv_general_dilated" and any(d > 1 for d in e.params["lhs_dilation"])
        for e in forward
      ),
      "patches_dot": sum(
        e.primitive.name == "dot_general" and any(v.aval.ndim > 2 for v in e.invars)
        for e in backward
      ),
    }
  xla, cpu = counts["xla"], counts["cpu"]
  assert xla["custom_vjp"] == 0 and xla["patches_dot"] == 0 and xla["conv"] > 0, counts
  assert cpu["patches_dot"] > 0, counts
  if network == "image_encoder":
    assert cpu["custom_vjp"] > 0, counts  # the stem's phase-form input gradient
  else:
    # Two strided convolutions (branch, shortcut) per stride-2 block, and the last layer.
    strided = 2 * (len(c.image_decoder_widths) - 2) + 1
    assert xla["dilated_conv"] == strided and cpu["dilated_conv"] == 0, counts


# ---------------------------------------------------------------------------------------------
# The same parameters under every choice; "auto" resolves per backend.


def _model(config, vocab_size, conv_impl):
  config.model.conv_impl = conv_impl
  return model_lib.create_model(config, vocab_size)


def _inputs(config, batch, seed=0):
  rng = np.random.default_rng(seed)
  s, t = config.data.image_size, config.data.text_length
  return {
    "frontal": jnp.asarray(rng.uniform(size=(batch, s, s, 1)), jnp.float32),
    "lateral": jnp.asarray(rng.uniform(size=(batch, s, s, 1)), jnp.float32),
    "text": jnp.asarray(rng.integers(0, 50, size=(batch, t)), jnp.int32),
  }


def test_paper_model_has_the_same_parameter_tree_under_every_conv_impl():
  """Names, shapes and dtypes of every variable at the paper's sizes (V = 2,900)."""
  c = default_config.get_config()
  inputs = {
    "frontal": jnp.zeros((8, 128, 128, 1)),
    "lateral": jnp.zeros((8, 128, 128, 1)),
    "text": jnp.zeros((8, 128), jnp.int32),
  }
  rngs = {n: jax.random.key(0) for n in ("params", "sample", "dropout")}
  trees = {}
  for impl in layers.CONV_IMPLS:
    m = _model(c, 2900, impl)
    assert m.conv_impl == impl
    trees[impl] = jax.eval_shape(lambda m=m: m.init(rngs, inputs, None, False))
  assert jax.tree.structure(trees["xla"]) == jax.tree.structure(trees["cpu"])
  chex.assert_trees_all_equal_shapes_and_dtypes(trees["xla"], trees["cpu"])
  assert sum(x.size for x in jax.tree.leaves(trees["xla"]["params"])) == 59_240_918


def test_small_model_same_initial_values_and_outputs_under_both_conv_impls():
  """A checkpoint of one choice restores and runs under the other: equal initial variables,
  and the same posteriors and decoder outputs from them (eval mode, float32)."""
  c = small_config()
  inputs = _inputs(c, 8)
  rngs = {n: jax.random.key(i) for i, n in enumerate(("params", "sample", "dropout"))}
  models = {impl: _model(c, 50, impl) for impl in layers.CONV_IMPLS}
  variables = {
    impl: jax.jit(lambda r, m=m: m.init(r, inputs, None, False))(rngs) for impl, m in models.items()
  }
  chex.assert_trees_all_equal(variables["xla"], variables["cpu"])
  outs = {
    impl: jax.jit(lambda v, m=m: m.apply(v, inputs, None, False, rngs=rngs))(variables["cpu"])
    for impl, m in models.items()
  }
  chex.assert_trees_all_close(outs["xla"], outs["cpu"], rtol=1e-4, atol=1e-4)


def test_auto_choices_resolve_per_backend(monkeypatch):
  assert jax.default_backend() == "cpu"
  assert model_lib.resolve_conv_impl("auto") == "cpu"
  assert model_lib.resolve_compute_dtype("auto") is None  # float32
  c = tiny_config.get_config()
  assert c.model.conv_impl == "auto" and c.model.compute_dtype == "auto"
  m = _model(c, 50, "auto")
  assert (m.conv_impl, m.dtype) == ("cpu", None)
  for backend in ("gpu", "tpu"):
    monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
    assert model_lib.resolve_conv_impl("auto") == "xla"
    assert model_lib.resolve_compute_dtype("auto") == jnp.bfloat16
    m = _model(c, 50, "auto")
    assert (m.conv_impl, m.dtype) == ("xla", jnp.bfloat16)
  # Explicit choices hold on any backend.
  assert model_lib.resolve_conv_impl("cpu") == "cpu"
  assert model_lib.resolve_compute_dtype("float32") is None


def test_unknown_choices_are_rejected_with_the_field_and_the_choices():
  c = tiny_config.get_config()
  with pytest.raises(
    ValueError,
    match=r"model.conv_impl must be one of \('auto', 'xla', "
    r"'cpu'\), got 'cudnn'",
  ):
    _model(c, 50, "cudnn")
  c.model.compute_dtype = "float16"
  with pytest.raises(
    ValueError,
    match=r"model.compute_dtype must be one of \('auto', "
    r"'float32', 'bfloat16'\), got 'float16'",
  ):
    _model(c, 50, "auto")
  with pytest.raises(ValueError, match="conv_impl must be one of"):  # modules take no 'auto'
    layers.Conv(4, (3,), conv_impl="auto").init(jax.random.key(0), jnp.zeros((1, 5, 2)))


# ---------------------------------------------------------------------------------------------
# Batch statistics over the rows in which a modality is present.


@pytest.fixture(scope="module")
def block_apply():
  """A 2-D residual block in training mode (dropout 0) with its initial variables; one jitted
  apply for every ``present`` array of one shape."""
  block = layers.ResidualBlock(6, 4, 2, 1, dropout=0.0)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 8, 8, 3)), jnp.float32)
  variables = block.init(jax.random.key(0), x, False)
  variables = {
    "params": variables["params"],  # running averages away from their init values
    "batch_stats": jax.tree.map(lambda v: v + 0.5, variables["batch_stats"]),
  }

  @jax.jit
  def apply(present):
    return block.apply(variables, x, True, present, mutable=["batch_stats"])

  @jax.jit
  def unmasked():
    return block.apply(variables, x, True, mutable=["batch_stats"])

  return variables, apply, unmasked


def test_all_rows_present_is_todays_batch_norm(block_apply):
  _, apply, unmasked = block_apply
  chex.assert_trees_all_close(apply(jnp.ones(6, bool)), unmasked(), rtol=1e-6, atol=1e-6)


def test_no_row_present_gives_finite_outputs_and_keeps_the_running_averages(block_apply):
  variables, apply, _ = block_apply
  y, updates = apply(jnp.zeros(6, bool))
  assert np.isfinite(np.asarray(y)).all()
  chex.assert_trees_all_equal(updates["batch_stats"], variables["batch_stats"])
  # Some rows present: the running averages move.
  _, updates = apply(jnp.asarray([True, False] * 3))
  moved = jax.tree.map(
    lambda a, b: bool(np.any(a != b)), updates["batch_stats"], variables["batch_stats"]
  )
  assert all(jax.tree.leaves(moved))


def test_missing_rows_shift_neither_batch_statistics_nor_present_rows():
  """Zero-filled rows of a missing lateral view and report: the lateral and text encoders'
  updated running averages and their posteriors of the present rows equal those of the batch
  of the present rows alone (train mode, dropout 0, float32)."""
  c = small_config()
  m = _model(c, 50, c.model.conv_impl)
  inputs = _inputs(c, 8, seed=1)
  present = np.array([True, False, True, True, False, True, False, True])
  for name in ("lateral", "text"):
    inputs[name] = jnp.where(present.reshape(-1, *(1,) * (inputs[name].ndim - 1)), inputs[name], 0)
  available = np.stack([np.ones(8, bool), present, present], axis=1)
  variables = jax.jit(lambda: m.init(jax.random.key(0), inputs, False, method=m.encode))()

  @jax.jit
  def encode(inputs, available):
    return m.apply(variables, inputs, True, available, method=m.encode, mutable=["batch_stats"])

  (mu, logvar), updates = encode(inputs, jnp.asarray(available))
  (mu_p, logvar_p), updates_p = encode(
    jax.tree.map(lambda v: v[present], inputs), jnp.ones((5, 3), bool)
  )
  for i, name in ((1, "lateral"), (2, "text")):
    np.testing.assert_allclose(mu[i][present], mu_p[i], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logvar[i][present], logvar_p[i], rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(
      updates["batch_stats"][f"encoders_{name}"],
      updates_p["batch_stats"][f"encoders_{name}"],
      rtol=1e-5,
      atol=1e-6,
    )
  # Without the mask the zero rows would have moved the statistics: the check can fail.
  (_, _), updates_all = encode(inputs, jnp.ones((8, 3), bool))
  diff = jax.tree.map(
    lambda a, b: float(np.max(np.abs(a - b))),
    updates_all["batch_stats"]["encoders_lateral"],
    updates_p["batch_stats"]["encoders_lateral"],
  )
  assert max(jax.tree.leaves(diff)) > 1e-3
