"""Likelihood: importance-sampled log p(x) with each subset's posterior as the proposal.

The protocol: docs/model.md#evaluation.

For subset k and target t (a modality, or 'joint'), S samples z_s ~ q_k(z | x_k) estimate
log p(x_t) ~= log (1/S) sum_s p(x_t | z_s) p(z_s) / q_k(z_s | x_k), beside the single-sample
ELBO; nats per study on the first ``eval.likelihood.examples`` test studies, S =
``eval.likelihood.samples``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from scipy import special

from mopoe_jax.data.datasource import DataSource
from mopoe_jax.evaluation.common import Context, Evaluator, Result, model_batch, table
from mopoe_jax.vae import fusion, objective
from mopoe_jax.vae import subsets as subsets_lib
from mopoe_jax.vae.model import DATA_MODALITIES, MoPoE, inputs_from_batch

_LOG_2PI = math.log(2.0 * math.pi)


@dataclasses.dataclass
class LikelihoodResult(Result):
  """`likelihood`'s result (results.json's "likelihood")."""

  units: str
  num_samples: int  # S, samples of q_subset per study
  num_examples: int  # test studies scored
  split: str
  proposal: str
  elbo: str  # what the ELBO column is
  # {subset: {modality or 'joint': {"log_px", "elbo", "log_px_by_samples", "num_examples"} or
  # None}} (`summarize_likelihood`)
  subsets: dict


@functools.partial(jax.jit, static_argnames=("model", "num_samples", "image_scale", "text_pad_id"))
def _log_weights(
  model: MoPoE,
  variables,
  batch: dict,
  rng,
  *,
  num_samples: int,
  image_scale: float,
  text_pad_id: int | None,
):
  """Per-sample terms of the importance-sampling estimate for every subset proposal.

  Returns:
    log_lik:   [S, M, K, B] log p(x_m | z_s) with z_s ~ q_k(z | x_k)
    log_ratio: [S, K, B]    log p(z_s) - log q_k(z_s | x_k)
    kl:        [K, B]       KL(q_k || N(0, I)), for the single-sample ELBO
    valid:     bool [B, K]
  """
  inputs, available = inputs_from_batch(batch, model.modalities)
  _, _, mu_k, logvar_k = model.apply(variables, inputs, available, False, method=model.posteriors)
  num_subsets, batch_size, dim = mu_k.shape

  def one_sample(s):
    eps = jax.random.normal(jax.random.fold_in(rng, s), mu_k.shape, mu_k.dtype)
    z = fusion.reparameterize(mu_k, logvar_k, eps)  # [K, B, D]
    log_q = -0.5 * jnp.sum(jnp.square(eps) + logvar_k + _LOG_2PI, axis=-1)
    log_p = -0.5 * jnp.sum(jnp.square(z) + _LOG_2PI, axis=-1)
    out = model.apply(
      variables, z.reshape(num_subsets * batch_size, dim), False, method=model.decode
    )
    log_lik = []
    for m in model.modalities:
      x = jnp.broadcast_to(inputs[m][None], (num_subsets,) + inputs[m].shape)
      x = x.reshape((num_subsets * batch_size,) + inputs[m].shape[1:])
      nll = objective.modality_nll(m, x, out[m], image_scale=image_scale, text_pad_id=text_pad_id)
      log_lik.append(-nll.reshape(num_subsets, batch_size))
    return jnp.stack(log_lik), log_p - log_q

  log_lik, log_ratio = jax.lax.map(one_sample, jnp.arange(num_samples))
  kl = fusion.gaussian_kl(mu_k, logvar_k)
  return log_lik, log_ratio, kl, fusion.valid_subsets(model.mask, available, batch_size)


def log_mean_exp(x: np.ndarray, axis: int = 0) -> np.ndarray:
  """log (1/S) sum_s exp(x_s) along ``axis``, computed with logsumexp."""
  return special.logsumexp(x, axis=axis) - math.log(x.shape[axis])


def _sample_counts(num_samples: int) -> list[int]:
  counts = [2**i for i in range(int(math.log2(num_samples)) + 1)]
  return counts if counts[-1] == num_samples else counts + [num_samples]


def summarize_likelihood(
  log_lik: np.ndarray,
  log_ratio: np.ndarray,
  kl: np.ndarray,
  valid: np.ndarray,
  available: np.ndarray,
  subset_names: Sequence[str],
  modalities: Sequence[str],
) -> dict:
  """Means over studies of the importance-sampled log p(x) and the single-sample ELBO.

  For subset k and target t (a modality, or 'joint' = all modalities the study has):
    log p(x_t) ~= log (1/S) sum_s p(x_t | z_s) p(z_s) / q_k(z_s | x_k),  z_s ~ q_k,
    ELBO_1 = log p(x_t | z_1) - KL(q_k || N(0, I)),
  averaged over the studies for which k is valid (and that have t). ``log_px_by_samples`` gives
  the estimate with the first 1, 2, 4, ... samples (it grows with S in expectation).

  Args: log_lik [S, M, K, N], log_ratio [S, K, N], kl [K, N], valid bool [N, K],
    available bool [N, M].
  """
  num_samples = log_lik.shape[0]
  joint = np.sum(np.where(available.T[None, :, None, :], log_lik, 0.0), axis=1)  # [S, K, N]
  out = {}
  for k, name in enumerate(subset_names):
    entry = {}
    targets = [(m, log_lik[:, i, k], available[:, i]) for i, m in enumerate(modalities)]
    for target, ll, has in targets + [("joint", joint[:, k], np.ones(len(valid), bool))]:
      rows = valid[:, k] & has
      if not rows.any():
        entry[target] = None
        continue
      lw = ll[:, rows] + log_ratio[:, k, rows]  # [S, n]
      by_samples = {str(s): float(log_mean_exp(lw[:s]).mean()) for s in _sample_counts(num_samples)}
      entry[target] = {
        "log_px": by_samples[str(num_samples)],
        "elbo": float((ll[0, rows] - kl[k, rows]).mean()),
        "log_px_by_samples": by_samples,
        "num_examples": int(rows.sum()),
      }
    out[name] = entry
  return out


def likelihood(
  model: MoPoE,
  variables,
  data: DataSource,
  split: str,
  rng,
  *,
  num_samples: int,
  num_examples: int,
  batch_size: int,
  image_scale: float,
  text_pad_id: int | None = None,
) -> LikelihoodResult:
  """Importance-sampled log p(x) per subset proposal on the first ``num_examples`` studies.

  Images: Laplace(loc = decoder output, scale = ``image_scale``), a density over [0, 1] pixel
  values; text: categorical from the logits (``text_pad_id`` left out, as in training). Nats per
  study. See `summarize_likelihood`.
  """
  if num_samples < 1 or num_examples < 1:
    raise ValueError(
      f"eval.likelihood.samples ({num_samples}) and eval.likelihood.examples "
      f"({num_examples}) must be positive."
    )
  columns = [DATA_MODALITIES.index(m) for m in model.modalities]
  parts, seen, start = [], 0, time.perf_counter()
  for i, batch in enumerate(
    data.eval_batches(split, batch_size=batch_size, process_index=0, process_count=1)
  ):
    rows = np.flatnonzero(batch["valid"])[: num_examples - seen]
    if rows.size == 0:
      break
    log_lik, log_ratio, kl, valid = jax.device_get(
      _log_weights(
        model,
        variables,
        model_batch(batch, model.modalities),
        jax.random.fold_in(rng, i),
        num_samples=num_samples,
        image_scale=float(image_scale),
        text_pad_id=text_pad_id,
      )
    )
    parts.append(
      (
        log_lik[..., rows],
        log_ratio[..., rows],
        kl[:, rows],
        valid[rows],
        batch["available"][rows][:, columns],
      )
    )
    seen += rows.size
    logging.info(
      "Likelihood: %d/%d studies, %d samples x %d subsets (%.0f s).",
      seen,
      num_examples,
      num_samples,
      len(model.mask),
      time.perf_counter() - start,
    )
    if seen >= num_examples:
      break
  if not parts:
    raise ValueError(f"Split {split!r} of {data.name} has no studies.")
  log_lik, log_ratio, kl, valid, available = (
    np.concatenate(p, axis=-1 if i < 3 else 0) for i, p in enumerate(zip(*parts))
  )
  names = subsets_lib.subset_names(model.modalities, model.mask)
  return LikelihoodResult(
    units="nats per study; image terms are Laplace densities of pixel values in [0, 1]",
    num_samples=num_samples,
    num_examples=int(seen),
    split=split,
    proposal="q_subset (the subset's PoE posterior)",
    elbo="single-sample: log p(x | z_1) - KL(q_subset || N(0, I))",
    subsets=summarize_likelihood(log_lik, log_ratio, kl, valid, available, names, model.modalities),
  )


class Likelihood(Evaluator):
  """Importance-sampled log p(x) and the ELBO per subset proposal on the test split."""

  name = "likelihood"

  def default_config(self) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.samples = 64  # samples of q_subset per study
    c.examples = 256  # the first test studies
    c.batch_size = 32  # studies per likelihood step (x samples x subsets)
    return c

  def check(self, config: ml_collections.ConfigDict) -> None:
    section = config.eval.likelihood
    for field in ("samples", "examples", "batch_size"):
      if section[field] < 1:
        raise ValueError(f"config.eval.likelihood.{field} must be >= 1, got {section[field]}.")

  def run(self, ctx: Context) -> LikelihoodResult:
    config = ctx.config
    section = config.eval.likelihood
    return likelihood(
      ctx.model,
      ctx.variables,
      ctx.data,
      config.data.test_split,
      ctx.rng_for(self.name),
      num_samples=section.samples,
      num_examples=section.examples,
      batch_size=section.batch_size,
      image_scale=config.model.image_scale,
      text_pad_id=ctx.data.vocab.pad_id if config.model.mask_text_padding else None,
    )

  def summary_scalars(self, result: LikelihoodResult) -> dict[str, float | None]:
    """log p(x) and the ELBO per proposal and target."""
    scalars = {}
    for name, entry in result.subsets.items():
      for target, values in entry.items():
        if values:
          scalars[f"eval_log_px/{name}/{target}"] = values["log_px"]
          scalars[f"eval_elbo/{name}/{target}"] = values["elbo"]
    return scalars

  def markdown(self, result: LikelihoodResult, settings: dict) -> str:
    """The report.md section: log p(x) and the ELBO per proposal and target."""
    targets = list(settings["modalities"]) + ["joint"]
    rows = []
    for name, entry in result.subsets.items():
      rows.append(
        [name]
        + [
          f"{entry[t]['log_px']:.1f} / {entry[t]['elbo']:.1f}" if entry.get(t) else "n/a"
          for t in targets
        ]
      )
    return "\n".join(
      [
        "## Likelihood: importance-sampled log p(x) / single-sample ELBO",
        "",
        f"{result.num_samples} samples of q_subset per study, {result.num_examples} "
        f"studies; {result.units}.",
        "",
        table(["proposal q_subset"] + targets, rows),
        "",
      ]
    )
