"""Subset algebra, product of experts, mixture assignment and the KL term."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mopoe_jax
from mopoe_jax.vae import fusion, subsets


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5])
def test_subset_count_and_canonical_order(m):
  mask = mopoe_jax.subset_mask(m)
  assert mask.shape == (2**m - 1, m) and mask.dtype == bool
  assert len({tuple(r) for r in mask}) == 2**m - 1  # all distinct, none empty
  assert mask.any(axis=1).all()
  sizes = mask.sum(axis=1)
  assert (np.diff(sizes) >= 0).all()  # by size
  expected = [c for s in range(1, m + 1) for c in itertools.combinations(range(m), s)]
  assert [tuple(np.flatnonzero(r)) for r in mask] == expected  # then combination order


def test_subset_names_and_variants():
  mods = ("frontal", "lateral", "text")
  assert subsets.subset_names(mods) == [
    "frontal",
    "lateral",
    "text",
    "frontal+lateral",
    "frontal+text",
    "lateral+text",
    "frontal+lateral+text",
  ]
  assert subsets.variant_mask("poe", 3).tolist() == [[True, True, True]]
  assert subsets.variant_mask("moe", 3).tolist() == np.eye(3, dtype=bool).tolist()
  assert subsets.variant_mask("mopoe", 3).shape == (7, 3)
  with pytest.raises(ValueError, match="Unknown model variant 'mvae'"):
    subsets.variant_mask("mvae", 3)


def _experts(rng, m=3, b=5, d=4):
  k1, k2 = jax.random.split(rng)
  return jax.random.normal(k1, (m, b, d)), jax.random.normal(k2, (m, b, d))


def test_poe_of_two_gaussians_matches_closed_form():
  mu, logvar = _experts(jax.random.PRNGKey(0), m=2)
  mask = mopoe_jax.subset_mask(2)  # F, L, FL
  mu_k, logvar_k = mopoe_jax.subset_posteriors(mu, logvar, mask, prior_expert="none")
  v1, v2 = np.exp(logvar[0]) + 1e-8, np.exp(logvar[1]) + 1e-8
  var = v1 * v2 / (v1 + v2)
  mean = (mu[0] * v2 + mu[1] * v1) / (v1 + v2)
  np.testing.assert_allclose(mu_k[2], mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.exp(logvar_k[2]), var, rtol=1e-5)
  # With the prior expert on the full set: precisions add one more unit.
  mu_p, logvar_p = mopoe_jax.subset_posteriors(mu, logvar, mask, prior_expert="full_set")
  t = 1 / v1 + 1 / v2 + 1
  np.testing.assert_allclose(np.exp(-logvar_p[2]), t, rtol=1e-5)
  np.testing.assert_allclose(mu_p[2], (mu[0] / v1 + mu[1] / v2) / t, rtol=1e-5, atol=1e-6)


def test_singletons_and_prior_expert_variants():
  mu, logvar = _experts(jax.random.PRNGKey(1))
  mask = mopoe_jax.subset_mask(3)
  out = {
    p: mopoe_jax.subset_posteriors(mu, logvar, mask, prior_expert=p) for p in fusion.PRIOR_EXPERTS
  }
  var = np.exp(logvar) + 1e-8
  for k in range(3):  # singletons are their own expert unless the prior joins them
    for p in ("none", "full_set"):
      np.testing.assert_allclose(out[p][0][k], mu[k], rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(out[p][1][k], np.log(var[k]), rtol=1e-5, atol=1e-5)
    t = 1 / var[k] + 1
    np.testing.assert_allclose(out["all"][0][k], mu[k] / var[k] / t, rtol=1e-5, atol=1e-6)
  # 'full_set' differs from 'none' on the last subset only.
  for k in range(7):
    same = np.allclose(out["none"][1][k], out["full_set"][1][k])
    assert same == (k != 6)
  with pytest.raises(ValueError, match="prior_expert"):
    mopoe_jax.subset_posteriors(mu, logvar, mask, prior_expert="everywhere")


def test_availability_masking_leaves_other_subsets_unchanged():
  mu, logvar = _experts(jax.random.PRNGKey(2), b=4)
  mask = mopoe_jax.subset_mask(3)
  available = np.ones((4, 3), bool)
  available[1, 1] = False  # example 1 lacks the lateral view
  full = mopoe_jax.subset_posteriors(mu, logvar, mask)
  part = mopoe_jax.subset_posteriors(mu, logvar, mask, available)
  valid = np.asarray(fusion.valid_subsets(mask, available, 4))
  assert valid[1].tolist() == [True, False, True, False, True, False, False]
  assert valid[[0, 2, 3]].all()
  for k in range(7):
    if not mask[k, 1]:  # subsets without the lateral: identical for every example
      np.testing.assert_allclose(part[0][k], full[0][k], rtol=1e-6)
      np.testing.assert_allclose(part[1][k], full[1][k], rtol=1e-6)
  # The lateral's values are ignored when it is missing: change them, nothing moves.
  mu2 = mu.at[1, 1].set(100.0)
  again = mopoe_jax.subset_posteriors(mu2, logvar, mask, available)
  np.testing.assert_allclose(again[0], part[0], rtol=1e-6)
  # Weights: uniform over the three valid subsets of example 1.
  w = np.asarray(fusion.subset_weights(valid))
  np.testing.assert_allclose(w[1], valid[1] / 3)
  np.testing.assert_allclose(w[0], np.full(7, 1 / 7))


def test_invalid_subset_without_experts_stays_finite():
  mu, logvar = _experts(jax.random.PRNGKey(3), b=2)
  mask = mopoe_jax.subset_mask(3)
  available = np.array([[True, False, False], [True, True, True]])
  mu_k, logvar_k = mopoe_jax.subset_posteriors(mu, logvar, mask, available, prior_expert="none")
  assert np.isfinite(mu_k).all() and np.isfinite(logvar_k).all()


def test_bad_shapes_and_empty_examples_raise():
  mu, logvar = _experts(jax.random.PRNGKey(4))
  mask = mopoe_jax.subset_mask(3)
  with pytest.raises(ValueError, match=r"mask has 2 modality columns but mu has M = 3"):
    mopoe_jax.subset_posteriors(mu, logvar, mopoe_jax.subset_mask(2))
  with pytest.raises(ValueError, match=r"mu and logvar must both be \[M, B, D\]"):
    mopoe_jax.subset_posteriors(mu, logvar[..., :2], mask)
  with pytest.raises(ValueError, match=r"available must have shape \[B, M\] = \[5, 3\]"):
    mopoe_jax.subset_posteriors(mu, logvar, mask, np.ones((5, 2), bool))
  available = np.ones((5, 3), bool)
  available[3] = False
  with pytest.raises(ValueError, match=r"Examples \[3\] have no available modality"):
    mopoe_jax.subset_posteriors(mu, logvar, mask, available)
  with pytest.raises(ValueError, match="batch size 5 < 7 subsets"):
    mopoe_jax.mixture_assignment(5, 7)
  with pytest.raises(ValueError, match=r"weights must be \[B, K\] = \[5, 7\]"):
    mopoe_jax.kl_divergence_terms(mu[:1].repeat(7, 0), logvar[:1].repeat(7, 0), np.ones((5, 6)))


@pytest.mark.parametrize("b,k", [(200, 7), (64, 7), (7, 7), (10, 1), (33, 3)])
def test_mixture_slicing_sizes(b, k):
  a = mopoe_jax.mixture_assignment(b, k)
  counts = np.bincount(a, minlength=k)
  per = b // k
  assert (counts[:-1] == per).all() and counts[-1] == b - per * (k - 1)
  assert (np.diff(a) >= 0).all()  # contiguous slices in subset order
  if (b, k) == (200, 7):
    assert counts.tolist() == [28] * 6 + [32]


def test_assignment_reassigns_invalid_rows_to_valid_subsets():
  mask = mopoe_jax.subset_mask(3)
  available = np.ones((70, 3), bool)
  available[::2, 2] = False  # every other example lacks the report
  valid = fusion.valid_subsets(mask, available, 70)
  for method in fusion.ASSIGNMENTS:
    a = np.asarray(fusion.assign_subsets(jax.random.PRNGKey(0), valid, method))
    assert np.asarray(valid)[np.arange(70), a].all()
  a = np.asarray(fusion.assign_subsets(jax.random.PRNGKey(0), valid, "slice"))
  sliced = mopoe_jax.mixture_assignment(70, 7)
  keep = np.asarray(valid)[np.arange(70), sliced]
  np.testing.assert_array_equal(a[keep], sliced[keep])  # valid rows keep their slice
  r = np.asarray(
    fusion.assign_subsets(
      jax.random.PRNGKey(1), fusion.valid_subsets(mask, np.ones((7000, 3), bool), 7000), "random"
    )
  )
  assert np.abs(np.bincount(r, minlength=7) / 7000 - 1 / 7).max() < 0.02


def test_analytic_kl_matches_monte_carlo():
  mu = jnp.array([[0.3, -1.0, 2.0]])
  logvar = jnp.array([[-0.5, 0.4, -1.2]])
  analytic = float(fusion.gaussian_kl(mu, logvar)[0])
  z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(jax.random.PRNGKey(0), (400_000, 3))
  log_q = -0.5 * jnp.sum((z - mu) ** 2 / jnp.exp(logvar) + logvar + jnp.log(2 * jnp.pi), -1)
  log_p = -0.5 * jnp.sum(z**2 + jnp.log(2 * jnp.pi), -1)
  mc = float(jnp.mean(log_q - log_p))
  assert abs(mc - analytic) < 0.02 * analytic


def test_kl_divergence_terms_weights_subsets():
  mu_k, logvar_k = _experts(jax.random.PRNGKey(5), m=7, b=3)
  w = np.zeros((3, 7))
  w[0] = 1 / 7
  w[1, [0, 2]] = 0.5
  w[2, 6] = 1.0
  kl = np.asarray(fusion.gaussian_kl(mu_k, logvar_k))  # [K, B]
  got = mopoe_jax.kl_divergence_terms(mu_k, logvar_k, w)
  np.testing.assert_allclose(got, [kl[:, 0].mean(), (kl[0, 1] + kl[2, 1]) / 2, kl[6, 2]], rtol=1e-5)
  # An invalid subset (weight 0) holding inf contributes nothing, not NaN.
  got = mopoe_jax.kl_divergence_terms(logvar_k.at[1].set(jnp.inf), logvar_k, w * (w > 0))
  assert np.isfinite(np.asarray(got)[1:]).all()


def test_fusion_is_vectorized_for_many_modalities():
  m = 10
  mask = mopoe_jax.subset_mask(m)
  assert mask.shape == (1023, 10)
  mu, logvar = _experts(jax.random.PRNGKey(6), m=m, b=2, d=3)
  jaxpr = jax.make_jaxpr(lambda a, b: mopoe_jax.subset_posteriors(a, b, mask))(mu, logvar)
  assert len(jaxpr.jaxpr.eqns) < 40  # a handful of ops, independent of K
  mu_k, _ = mopoe_jax.subset_posteriors(mu, logvar, mask, prior_expert="none")
  np.testing.assert_allclose(mu_k[:m], mu, rtol=1e-5, atol=1e-6)
