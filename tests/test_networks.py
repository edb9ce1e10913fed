"""Fast transposed convolution, the networks' structure, the objective end to end."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default as default_config
from configs import tiny as tiny_config
from mopoe_jax import layers, model as model_lib, networks, objective, subsets


def _reference_conv_transpose(x, w, s, p, op):
  """PyTorch's definition through lax.conv_transpose (kernel [*k, C_in, C_out])."""
  nd = x.ndim - 2
  spatial = "HW"[:nd]
  pads = [(k - 1 - pp, k - 1 - pp + o) for k, pp, o in zip(w.shape[:nd], p, op)]
  return jax.lax.conv_transpose(
      x, w, s, pads,
      dimension_numbers=("N" + spatial + "C", spatial + "OI", "N" + spatial + "C"),
      transpose_kernel=True)


def _naive_conv_transpose(x, w, s, p, op):
  """The definition itself: out[s*i - p + t] += x[i] @ w[t] (numpy, small inputs only)."""
  nd = x.ndim - 2
  ks = w.shape[:nd]
  outs = [(n - 1) * ss - 2 * pp + k + o
          for n, ss, pp, k, o in zip(x.shape[1:-1], s, p, ks, op)]
  y = np.zeros((x.shape[0], *outs, w.shape[-1]))
  for idx in np.ndindex(*x.shape[1:-1]):
    for t in np.ndindex(*ks):
      pos = [i * ss - pp + tt for i, ss, pp, tt in zip(idx, s, p, t)]
      if all(0 <= q < o for q, o in zip(pos, outs)):
        y[(slice(None), *pos)] += x[(slice(None), *idx)] @ w[t]
  return y


CASES = [  # (k, s, p, output_padding, n): every transposed convolution of the networks
    (4, 2, 1, 0, 5), (3, 2, 1, 1, 4), (4, 1, 0, 0, 1), (1, 1, 0, 0, 3), (5, 3, 1, 0, 3)]


@pytest.mark.parametrize("c_out", [1, 8])  # 2-D: one gathered convolution / one per phase
@pytest.mark.parametrize("nd", [1, 2])
@pytest.mark.parametrize("k,s,p,op,n", CASES)
def test_fast_conv_transpose_equals_reference_values_and_gradients(nd, k, s, p, op, n, c_out):
  rng = np.random.default_rng(k * 10 + s)
  x = jnp.asarray(rng.normal(size=(2, *(n,) * nd, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(*(k,) * nd, 3, c_out)), jnp.float32)
  args = ((s,) * nd, (p,) * nd, (op,) * nd)
  fast = layers.conv_transpose(x, w, *args)
  ref = _reference_conv_transpose(x, w, *args)
  np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(fast, _naive_conv_transpose(np.asarray(x, np.float64),
                                                         np.asarray(w, np.float64), *args),
                             rtol=1e-4, atol=1e-4)
  cot = jnp.asarray(rng.normal(size=fast.shape), jnp.float32)
  g_fast = jax.grad(lambda a, b: jnp.sum(layers.conv_transpose(a, b, *args) * cot),
                    argnums=(0, 1))(x, w)
  g_ref = jax.grad(lambda a, b: jnp.sum(_reference_conv_transpose(a, b, *args) * cot),
                   argnums=(0, 1))(x, w)
  for a, b in zip(g_fast, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,k,s,p", [
    ((2, 9, 3), 4, 2, 1),        # 1-D (text encoder): patches + dot
    ((2, 4, 4, 3), 4, 2, 1),     # 2-D, 2 x 2 x 2 output rows: patches + dot
    ((16, 8, 8, 3), 3, 2, 1),    # 2-D, 16 x 4 x 4 = 256 rows: patches + dot
    ((8, 24, 24, 3), 4, 2, 0),   # 2-D, 968 rows, k - 2p + op != s: lax convolution
    ((8, 16, 16, 3), 4, 2, 1),   # 2-D, 512 rows: input gradient as phase-form conv_transpose
    ((8, 18, 18, 3), 3, 2, 1),   # 2-D, k3 s2 p1 (output_padding 1): phase-form input gradient
    ((8, 17, 17, 3), 3, 2, 1),   # 2-D, odd size (k - 2p + op != s): lax convolution
    ((2, 5, 3), 1, 1, 0)])
def test_conv_equals_lax_convolution_values_and_gradients(shape, k, s, p):
  nd = len(shape) - 2
  rng = np.random.default_rng(sum(shape) + k)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=(*(k,) * nd, 3, 5)), jnp.float32)
  args = ((s,) * nd, [(p, p)] * nd)
  spatial = "HW"[:nd]
  dn = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
  ref = lambda a, b: jax.lax.conv_general_dilated(a, b, *args, dimension_numbers=dn)
  fast = layers.conv(x, w, *args)
  np.testing.assert_allclose(fast, ref(x, w), rtol=1e-5, atol=1e-5)
  cot = jnp.asarray(rng.normal(size=fast.shape), jnp.float32)
  g_fast = jax.grad(lambda a, b: jnp.sum(layers.conv(a, b, *args) * cot), argnums=(0, 1))(x, w)
  g_ref = jax.grad(lambda a, b: jnp.sum(ref(a, b) * cot), argnums=(0, 1))(x, w)
  for a, b in zip(g_fast, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_strided_conv_input_gradient_has_no_dilated_convolution():
  """The encoders' k4 s2 p1 convolutions: XLA's input gradient would dilate the output gradient
  (lhs_dilation 2, four times the FLOPs); ours runs only stride-1, undilated convolutions."""
  x = jnp.ones((8, 16, 16, 3))
  w = jnp.ones((4, 4, 3, 5))
  jaxpr = jax.make_jaxpr(jax.grad(lambda a: jnp.sum(layers.conv(a, w, (2, 2), [(1, 1)] * 2))))(x)
  convs = [e for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
  assert convs and all(c.params["lhs_dilation"] == (1, 1) for c in convs)


def test_conv_module_is_a_drop_in_for_nn_conv():
  """Same parameter names, shapes, initial values and outputs as flax's nn.Conv."""
  import flax.linen as nn
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6, 3)), jnp.float32)
  kwargs = dict(features=4, kernel_size=(3, 3), strides=(2, 2), padding=[(1, 1), (1, 1)])
  ours, theirs = layers.Conv(**kwargs), nn.Conv(**kwargs)
  v_ours = ours.init(jax.random.key(1), x)
  v_theirs = theirs.init(jax.random.key(1), x)
  chex.assert_trees_all_close(v_ours, v_theirs)
  np.testing.assert_allclose(ours.apply(v_ours, x), theirs.apply(v_theirs, x), rtol=1e-5,
                             atol=1e-5)


def test_decoders_use_the_phase_form():
  """Strided transposed convolutions: one stride-1 2x2 convolution per phase, no lhs dilation
  and no zero taps; 1-D ones are dots."""
  x = jnp.ones((1, 4, 4, 8))
  w = jnp.ones((4, 4, 8, 8))
  jaxpr = jax.make_jaxpr(lambda a: layers.conv_transpose(a, w, (2, 2), (1, 1)))(x)
  convs = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
  assert len(convs) == 4
  for c in convs:
    assert c.params["lhs_dilation"] == (1, 1) and c.invars[1].aval.shape[:2] == (2, 2)
  jaxpr = jax.make_jaxpr(lambda a: layers.conv_transpose(a, w[0], (2,), (1,)))(x[:, 0])
  assert not [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
  # One output channel (the last decoder layer): all phases in one convolution to s^2 channels.
  jaxpr = jax.make_jaxpr(lambda a: layers.conv_transpose(a, w[:3, :3, :, :1], (2, 2), (1, 1),
                                                         (1, 1)))(x)
  convs = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
  assert len(convs) == 1 and convs[0].params["lhs_dilation"] == (1, 1)
  assert convs[0].invars[1].aval.shape == (2, 2, 8, 4)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _abstract_init(config, vocab_size, batch=8):
  c = config
  m = model_lib.model_from_config(c.model, modalities=c.data.modalities,
                                  image_size=c.data.image_size,
                                  text_length=c.data.text_length, vocab_size=vocab_size)
  s, t = c.data.image_size, c.data.text_length
  inputs = {"frontal": jnp.zeros((batch, s, s, 1)), "lateral": jnp.zeros((batch, s, s, 1)),
            "text": jnp.zeros((batch, t), jnp.int32)}
  rngs = {n: jax.random.PRNGKey(0) for n in ("params", "sample", "dropout")}
  variables = jax.eval_shape(lambda: m.init(rngs, inputs, None, False))
  out = jax.eval_shape(lambda v: m.apply(v, inputs, None, False, rngs=rngs), variables)
  return m, variables, out


def test_paper_model_parameter_counts_and_shapes():
  """SPEC §2's counts of the reference at latent 512, V = 2,900, 128 px, 128 tokens."""
  _, variables, out = _abstract_init(default_config.get_config(), vocab_size=2900)
  p = variables["params"]
  assert _count(p["encoders_frontal"]) == 9_081_728
  assert _count(p["encoders_frontal"]["mu"]) == 164_352
  blocks = [_count(p["encoders_frontal"][f"ResidualBlock_{i}"]) for i in range(5)]
  assert blocks == [266_880, 803_904, 1_611_264, 2_688_960, 3_381_440]
  assert _count(p["encoders_frontal"]["Conv_0"]) == 576
  assert _count(p["decoders_lateral"]) == 5_769_921
  assert _count(p["encoders_text"]) == 11_569_024
  assert _count(p["decoders_text"]) == 17_968_596
  assert _count(p) == 59_240_918
  assert out.outputs["frontal"].shape == (8, 128, 128, 1)
  assert out.outputs["text"].shape == (8, 128, 2900)
  assert out.mu.shape == (3, 8, 512) and out.mu_k.shape == (7, 8, 512)
  assert out.z.shape == (8, 512)


def test_geometry_errors_say_what_to_change():
  c = tiny_config.get_config()
  with pytest.raises(ValueError, match="Image size 48 does not fit the networks"):
    networks.check_image_geometry(48, c.model.image_encoder_widths,
                                  c.model.image_decoder_widths)
  with pytest.raises(ValueError, match="Text length 30 does not fit"):
    networks.check_text_geometry(30, c.model.text_encoder_widths, c.model.text_decoder_widths)


@pytest.fixture(scope="module")
def tiny_setup():
  c = tiny_config.get_config()
  m = model_lib.model_from_config(c.model, modalities=c.data.modalities,
                                  image_size=c.data.image_size,
                                  text_length=c.data.text_length, vocab_size=50)
  rng = np.random.default_rng(0)
  b, s, t = 16, c.data.image_size, c.data.text_length
  inputs = {"frontal": jnp.asarray(rng.uniform(size=(b, s, s, 1)), jnp.float32),
            "lateral": jnp.asarray(rng.uniform(size=(b, s, s, 1)), jnp.float32),
            "text": jnp.asarray(rng.integers(0, 50, size=(b, t)), jnp.int32)}
  available = np.ones((b, 3), bool)
  available[::3, 1] = False
  available[1::4, 2] = False
  rngs = {n: jax.random.PRNGKey(i) for i, n in enumerate(("params", "sample", "dropout"))}
  variables = jax.jit(lambda r: m.init(r, inputs, jnp.asarray(available), False))(rngs)
  return c, m, variables, inputs, jnp.asarray(available)


@pytest.fixture(scope="module")
def jitted_loss_and_grad(tiny_setup):
  """One jitted value-and-grad of the objective, shared; it may be traced once only."""
  c, m, *_ = tiny_setup
  loss = _loss_fn(c, m)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, batch_stats, inputs, available, rng):
    return jax.value_and_grad(loss, has_aux=True)(params, batch_stats, inputs, available, rng)
  return step


def _loss_fn(c, m):
  names = subsets.subset_names(c.data.modalities, m.mask)

  def loss(params, batch_stats, inputs, available, rng):
    out, updates = m.apply({"params": params, "batch_stats": batch_stats}, inputs, available,
                           True, rngs={"sample": rng, "dropout": rng},
                           mutable=["batch_stats"])
    terms = objective.loss_terms(out, inputs, available, modalities=c.data.modalities,
                                 rec_weights=c.model.rec_weights, beta=c.model.beta,
                                 image_scale=c.model.image_scale)
    value, metrics = objective.reduce_terms(terms, names, available)
    return value, (terms, metrics, updates)
  return loss


def test_objective_terms_and_finite_gradients(tiny_setup, jitted_loss_and_grad):
  c, m, variables, inputs, available = tiny_setup
  (value, (terms, metrics, _)), grads = jitted_loss_and_grad(
      variables["params"], variables["batch_stats"], inputs, available, jax.random.PRNGKey(3))
  assert np.isfinite(float(value))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  assert _count(grads) == _count(variables["params"])
  # Missing modalities contribute no reconstruction; the total is rec + beta * kl.
  assert (np.asarray(terms.nll["lateral"])[~np.asarray(available[:, 1])] == 0).all()
  assert (np.asarray(terms.nll["text"])[np.asarray(available[:, 2])] > 0).all()
  rec = sum(w * terms.nll[mod] for w, mod in zip(c.model.rec_weights, c.data.modalities))
  np.testing.assert_allclose(terms.rec, rec, rtol=1e-5)
  np.testing.assert_allclose(terms.total, terms.rec + c.model.beta * terms.kl, rtol=1e-5)
  np.testing.assert_allclose(value, np.mean(terms.total), rtol=1e-5)
  assert set(metrics) >= {"loss", "rec", "kl", "nll/frontal", "kl_subset/frontal+lateral+text"}


def test_likelihoods_match_closed_forms():
  x = jnp.array([[[0.2, 0.9]]])
  loc = jnp.array([[[0.5, 0.4]]])
  expected = (0.3 + 0.5) / 0.75 + 2 * np.log(1.5)
  np.testing.assert_allclose(objective.laplace_nll(x, loc, 0.75), [expected], rtol=1e-6)
  logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))
  tokens = jnp.array([[0, 1]])
  np.testing.assert_allclose(objective.categorical_nll(tokens, logits),
                             [-np.log(0.5) - np.log(0.1)], rtol=1e-5)
  np.testing.assert_allclose(objective.categorical_nll(tokens, logits, pad_id=1),
                             [-np.log(0.5)], rtol=1e-5)  # id 1 is <pad>
  np.testing.assert_allclose(objective.modality_nll("text", tokens, logits, image_scale=0.75,
                                                    text_pad_id=1), [-np.log(0.5)], rtol=1e-5)
  np.testing.assert_allclose(objective.modality_nll("frontal", x, loc, image_scale=0.75),
                             [expected], rtol=1e-6)


def test_sums_of_batch_parts_give_the_batch_means(tiny_setup, jitted_loss_and_grad):
  """The eval loss adds `objective.sums` over batches; the train step reduces one batch. Both
  must give the same means, with padding rows (row_weight 0) adding nothing."""
  c, m, variables, inputs, available = tiny_setup
  (value, (terms, metrics, _)), _ = jitted_loss_and_grad(
      variables["params"], variables["batch_stats"], inputs, available, jax.random.PRNGKey(3))
  names = subsets.subset_names(c.data.modalities, m.mask)
  b = terms.total.shape[0]
  part = lambda t, rows: jax.tree.map(lambda x: x[rows], t)  # noqa: E731
  halves = [objective.sums(part(terms, slice(0, b // 2)), names, available[:b // 2]),
            objective.sums(part(terms, slice(b // 2, b)), names, available[b // 2:])]
  padded = objective.sums(terms, names, available, row_weight=jnp.zeros((b,), bool))
  totals = {k: halves[0][k] + halves[1][k] + padded[k] for k in halves[0]}
  means = objective.means(totals)
  assert set(means) == set(metrics)
  for k in metrics:
    np.testing.assert_allclose(means[k], metrics[k], rtol=1e-5, err_msg=k)
  np.testing.assert_allclose(means["loss"], value, rtol=1e-6)
  # Each KL is computed once: the KL term is the mixture of the per-subset KLs.
  weights = np.asarray(terms.valid, np.float32)
  weights /= weights.sum(axis=1, keepdims=True)
  np.testing.assert_allclose(terms.kl, (weights * np.asarray(terms.kl_per_subset)).sum(1),
                             rtol=1e-5)


def test_jitted_objective_does_not_retrace(tiny_setup, jitted_loss_and_grad):
  _, _, variables, inputs, available = tiny_setup
  for seed in range(2):  # a second trace would raise in chex.assert_max_traces
    (v, _), _ = jitted_loss_and_grad(variables["params"], variables["batch_stats"], inputs,
                                     available, jax.random.PRNGKey(seed))
    assert np.isfinite(float(v))


def test_bfloat16_compute_keeps_params_and_outputs_float32():
  c = tiny_config.get_config()
  c.model.compute_dtype = "bfloat16"
  m, variables, out = _abstract_init(c, vocab_size=50)
  assert {x.dtype for x in jax.tree.leaves(variables["params"])} == {jnp.dtype("float32")}
  assert out.outputs["frontal"].dtype == jnp.float32 and out.mu_k.dtype == jnp.float32
  jaxpr = jax.make_jaxpr(lambda v: m.apply(v, *_tiny_inputs(c), False,
                                           rngs={"sample": jax.random.PRNGKey(0)}))(variables)
  assert "bf16" in str(jaxpr)  # the convolutions run in bfloat16
  c.model.compute_dtype = "float16"
  with pytest.raises(ValueError, match="compute_dtype must be 'float32' or 'bfloat16'"):
    _abstract_init(c, vocab_size=50)


def _tiny_inputs(c, batch=8):
  s, t = c.data.image_size, c.data.text_length
  return ({"frontal": jnp.zeros((batch, s, s, 1)), "lateral": jnp.zeros((batch, s, s, 1)),
           "text": jnp.zeros((batch, t), jnp.int32)}, None)
