"""The evaluators of a trained model (docs/model.md#evaluation), one module each.

An evaluator is a `mopoe_jax.evaluation.common.Evaluator`; adding one is its module and one
`register` line below. ``config.eval.evaluators`` names the ones that run, in order; report.md
shows their sections in the order of registration; ``config.eval.<name>`` holds each one's
settings (a config without the section runs with its `default_config`; `with_defaults`).
`mopoe_jax.evaluation.evaluate` restores the model once, checks the settings and calls them.
"""

from __future__ import annotations

import ml_collections

from mopoe_jax.evaluation import coherence, generation, likelihood, probes
from mopoe_jax.evaluation.common import Evaluator

# The fields of config.eval that are no evaluator's: every other entry is an evaluator's section.
SHARED_FIELDS = ("batch_size", "checkpoint_step", "evaluators", "multihost_wait_seconds", "seed")

EVALUATORS: dict[str, Evaluator] = {}


def register(evaluator: Evaluator) -> Evaluator:
  """Adds ``evaluator`` under its name (its report.md section after those registered before)."""
  name = evaluator.name
  if not name.isidentifier() or name in SHARED_FIELDS:
    raise ValueError(
      f"An evaluator's name is its section of config.eval: a Python identifier other than "
      f"{SHARED_FIELDS}; got {name!r}."
    )
  if name in EVALUATORS:
    raise ValueError(f"An evaluator named {name!r} is registered already.")
  EVALUATORS[name] = evaluator
  return evaluator


register(probes.Probes())  # latent linear probes: the paper's Table 1
register(coherence.Coherence())  # classifiers on generated modalities vs the source's labels
register(likelihood.Likelihood())  # importance-sampled log p(x) per subset proposal
register(generation.Generation())  # grids and reports generated from every subset and the prior


def with_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` with the default (`Evaluator.default_config`) of every section or field that a
  registered evaluator in ``config.eval.evaluators`` has and ``config.eval`` lacks: a copy where
  something is added, ``config`` itself otherwise."""
  missing = {}
  for name in config.eval.evaluators:
    if name not in EVALUATORS:
      continue
    defaults = EVALUATORS[name].default_config()
    section = config.eval.get(name)
    keys = [k for k in defaults if section is None or k not in section]
    if keys:
      missing[name] = (defaults, keys)
  if not missing:
    return config
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for name, (defaults, keys) in missing.items():
      if name not in config.eval:
        config.eval[name] = ml_collections.ConfigDict()
      for k in keys:
        config.eval[name][k] = defaults[k]
  return config
