"""The fields ``config.eval`` had before each evaluator got its own section, and where they went.

A config that still sets one (a config file, or ``--config.eval.probe_repeats=5`` on the command
line, which ml_collections would otherwise refuse with a bare KeyError) fails with an error that
names the new field. Nothing here imports JAX or the evaluators: `main.py` checks its command
line before the flags are parsed.
"""

from __future__ import annotations

import re
from typing import Sequence

# Old field of config.eval -> its new place(s) under config.eval.
RETIRED_FIELDS = {
  "probe_train_examples": ("probes.train_examples",),
  "probe_repeats": ("probes.repeats",),
  "probe_max_iter": ("probes.max_iter",),
  "probe_min_test_examples": ("probes.min_test_examples",),
  "generation_studies": ("generation.studies",),
  "prior_samples": ("generation.prior_samples",),
  "generation_latent": ("generation.latent", "coherence.latent"),
  "likelihood_samples": ("likelihood.samples",),
  "likelihood_examples": ("likelihood.examples",),
  "likelihood_batch_size": ("likelihood.batch_size",),
  "attribute_coherence": ("coherence.attributes",),
}

_OVERRIDE = re.compile(r"^--?config\.eval\.([A-Za-z_][A-Za-z0-9_]*)(=|$)")


def retired_message(field: str) -> str | None:
  """Why ``config.eval.<field>`` is refused and what replaces it; None for a current field."""
  new = RETIRED_FIELDS.get(field)
  if new is None:
    return None
  return (
    f"config.eval.{field} is no longer a field: each evaluator has its own section of "
    "config.eval now; use " + " and ".join(f"eval.{n}" for n in new) + " instead."
  )


def check_overrides(argv: Sequence[str]) -> None:
  """Raises ValueError naming the new field when ``argv`` overrides a retired one
  (``--config.eval.probe_repeats=5`` or ``--config.eval.probe_repeats 5``)."""
  for arg in argv:
    match = _OVERRIDE.match(arg)
    message = match and retired_message(match.group(1))
    if message:
      raise ValueError(f"{arg.split('=')[0]}: {message}")
