"""Product of experts for every subset at once, the mixture over subsets, and the KL term.

Shapes: M modalities, K subsets (rows of a bool [K, M] mask), B examples, D latent dims.
The PoE of all K subsets is one masked precision sum over the modality axis (two einsums),
so M = 10 (K = 1023) compiles to the same few operations as M = 3.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

PRIOR_EXPERTS = ("none", "full_set", "all")
ASSIGNMENTS = ("slice", "random")
_EPS = 1e-8  # added to each expert's variance, as in the reference


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def check_available(available, batch_size: int, num_modalities: int):
  """Validates an availability mask [B, M]; an example with no modality is an error."""
  if available is None:
    return
  shape = tuple(np.shape(available))
  if shape != (batch_size, num_modalities):
    raise ValueError(
      f"available must have shape [B, M] = [{batch_size}, {num_modalities}], got {shape}."
    )
  if _is_concrete(available):
    empty = np.flatnonzero(~np.any(np.asarray(available, dtype=bool), axis=1))
    if empty.size:
      raise ValueError(
        f"Examples {empty[:10].tolist()} have no available modality; every example needs at "
        "least one (drop such studies in the input pipeline)."
      )


def valid_subsets(mask, available, batch_size: int):
  """bool [B, K]: subset k is valid for example b iff all of k's modalities are available."""
  mask = jnp.asarray(mask, dtype=bool)
  if available is None:
    return jnp.ones((batch_size, mask.shape[0]), dtype=bool)
  available = jnp.asarray(available, dtype=bool)
  missing_used = mask[None, :, :] & ~available[:, None, :]  # [B, K, M]
  return ~jnp.any(missing_used, axis=-1)


def prior_flags(mask, prior_expert: str) -> np.ndarray:
  """float [K]: 1 where the subset's product includes the N(0, I) prior expert."""
  mask = np.asarray(mask, dtype=bool)
  if prior_expert == "none":
    return np.zeros(mask.shape[0], np.float32)
  if prior_expert == "full_set":
    return mask.all(axis=1).astype(np.float32)
  if prior_expert == "all":
    return np.ones(mask.shape[0], np.float32)
  raise ValueError(f"Unknown prior_expert {prior_expert!r}; choose one of {PRIOR_EXPERTS}.")


def subset_posteriors(mu, logvar, mask, available=None, prior_expert: str = "full_set"):
  """Gaussian product of experts for every subset of ``mask`` at once.

  Args:
    mu: [M, B, D] means of the unimodal posteriors.
    logvar: [M, B, D] their log-variances.
    mask: bool [K, M], the subsets.
    available: bool [B, M] or None (all available). A missing modality contributes no expert.
    prior_expert: "none", "full_set" (N(0, I) joins the full set only) or "all".

  Returns:
    (mu_k, logvar_k), each [K, B, D]. The precision of subset k is
    T_k = sum_{m in k} 1 / (exp(logvar_m) + 1e-8) (+ 1 for the prior expert) and
    mu_k = sum_{m in k} T_m mu_m / T_k. A subset with no expert at all for an example (only
    possible when it is invalid) gets mu 0, logvar 0: finite, and weighted by nothing.
  """
  mask = np.asarray(mask, dtype=bool) if _is_concrete(mask) else mask
  if mask.ndim != 2:
    raise ValueError(f"mask must be bool [K, M], got shape {tuple(mask.shape)}.")
  if mu.ndim != 3 or mu.shape != logvar.shape:
    raise ValueError(
      f"mu and logvar must both be [M, B, D]; got mu {tuple(mu.shape)}, "
      f"logvar {tuple(logvar.shape)}."
    )
  num_modalities, batch_size, _ = mu.shape
  if mask.shape[1] != num_modalities:
    raise ValueError(
      f"mask has {mask.shape[1]} modality columns but mu has M = {num_modalities} "
      f"(mask shape {tuple(mask.shape)}, mu shape {tuple(mu.shape)})."
    )
  check_available(available, batch_size, num_modalities)

  precision = 1.0 / (jnp.exp(logvar) + _EPS)  # [M, B, D]
  use = jnp.broadcast_to(
    jnp.asarray(mask, mu.dtype)[:, :, None], (mask.shape[0], num_modalities, batch_size)
  )  # [K, M, B]
  if available is not None:
    use = use * jnp.asarray(available, mu.dtype).T[None, :, :]
  prior = jnp.asarray(prior_flags(mask, prior_expert), mu.dtype)[:, None, None]  # [K, 1, 1]
  total_precision = jnp.einsum("kmb,mbd->kbd", use, precision) + prior  # [K, B, D]
  weighted_mu = jnp.einsum("kmb,mbd->kbd", use, precision * mu)  # prior mean is 0
  has_expert = total_precision > 0
  safe_precision = jnp.where(has_expert, total_precision, 1.0)
  mu_k = weighted_mu / safe_precision
  logvar_k = -jnp.log(safe_precision)
  return mu_k, logvar_k


def subset_weights(valid):
  """float [B, K]: uniform mixture weights 1 / K_valid over each example's valid subsets."""
  valid = jnp.asarray(valid, jnp.float32)
  return valid / jnp.maximum(valid.sum(axis=-1, keepdims=True), 1.0)


def mixture_assignment(batch_size: int, num_subsets: int) -> np.ndarray:
  """int [B]: the reference's deterministic slicing of a batch over the K subsets.

  Rows [k * floor(B/K), (k+1) * floor(B/K)) use subset k; the last subset (the full set in the
  canonical order) also takes the remainder. B=200, K=7: 28 rows each, 32 for the full set.
  """
  if num_subsets < 1:
    raise ValueError(f"num_subsets must be positive, got {num_subsets}.")
  if batch_size < num_subsets:
    raise ValueError(
      f"Deterministic mixture slicing needs at least one row per subset: batch size "
      f"{batch_size} < {num_subsets} subsets. Use a batch of at least {num_subsets} rows "
      "or the 'random' assignment."
    )
  per_subset = batch_size // num_subsets
  return np.minimum(np.arange(batch_size) // per_subset, num_subsets - 1).astype(np.int32)


def assign_subsets(rng, valid, method: str = "slice"):
  """int [B]: the subset each row samples z from.

  ``slice`` follows :func:`mixture_assignment`; ``random`` draws a valid subset uniformly per
  row. Either way, a row whose subset is invalid for it (a modality missing) is reassigned to a
  valid subset drawn uniformly. A row with no valid subset at all keeps its index; its loss
  weight is zero (see :func:`example_weights`).
  """
  batch_size, num_subsets = valid.shape
  logits = jnp.where(valid, 0.0, -jnp.inf)
  any_valid = valid.any(axis=-1)
  drawn = jax.random.categorical(rng, jnp.where(any_valid[:, None], logits, 0.0), axis=-1)
  if method == "random":
    return drawn.astype(jnp.int32)
  if method != "slice":
    raise ValueError(f"Unknown mixture assignment {method!r}; choose one of {ASSIGNMENTS}.")
  sliced = jnp.asarray(mixture_assignment(batch_size, num_subsets))
  keep = jnp.take_along_axis(valid, sliced[:, None], axis=1)[:, 0] | ~any_valid
  return jnp.where(keep, sliced, drawn).astype(jnp.int32)


def example_weights(valid):
  """float [B]: 1 for rows with at least one valid subset, else 0 (nothing to learn from)."""
  return jnp.any(valid, axis=-1).astype(jnp.float32)


def reparameterize(mu, logvar, eps):
  """z = mu + sigma * eps, sigma = exp(logvar / 2): a draw of N(mu, exp(logvar)) from eps ~ N(0, I).

  Any shapes that broadcast together; the one place where a posterior is sampled.
  """
  return mu + jnp.exp(0.5 * logvar) * eps


def sample_mixture(rng, mu_k, logvar_k, assignment):
  """One reparameterised z per row from its assigned subset: [K, B, D] x [B] -> [B, D]."""
  idx = assignment[None, :, None]
  mu = jnp.take_along_axis(mu_k, idx, axis=0)[0]
  logvar = jnp.take_along_axis(logvar_k, idx, axis=0)[0]
  return reparameterize(mu, logvar, jax.random.normal(rng, mu.shape, mu.dtype))


def gaussian_kl(mu, logvar):
  """Analytic KL(N(mu, exp(logvar)) || N(0, I)) summed over the last axis."""
  return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mu) - 1.0 - logvar, axis=-1)


def mixture_kl(kl_per_subset, weights):
  """[B]: sum_k weights[b, k] * kl_per_subset[b, k]; invalid subsets (weight 0) add nothing.

  Args:
    kl_per_subset: [B, K] KL(q_k(b) || N(0, I)) of every subset (any finite or infinite value
      where the weight is 0).
    weights: [B, K] mixture weights.
  """
  return jnp.sum(jnp.where(weights > 0, weights * kl_per_subset, 0.0), axis=-1)


def kl_divergence_terms(mu_k, logvar_k, weights):
  """[B]: sum_k weights[b, k] * KL(q_k(b) || N(0, I)), each KL summed over latent dims.

  Args:
    mu_k, logvar_k: [K, B, D] subset posteriors.
    weights: [B, K] mixture weights (uniform 1/K over valid subsets; 0 for invalid ones).
  """
  if mu_k.shape != logvar_k.shape or mu_k.ndim != 3:
    raise ValueError(
      f"mu_k and logvar_k must both be [K, B, D]; got {tuple(mu_k.shape)} and "
      f"{tuple(logvar_k.shape)}."
    )
  num_subsets, batch_size, _ = mu_k.shape
  if tuple(weights.shape) != (batch_size, num_subsets):
    raise ValueError(
      f"weights must be [B, K] = [{batch_size}, {num_subsets}], got {tuple(weights.shape)}."
    )
  return mixture_kl(gaussian_kl(mu_k, logvar_k).T, weights)
