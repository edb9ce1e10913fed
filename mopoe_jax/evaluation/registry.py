"""The evaluators of a trained model (docs/model.md#evaluation), one module each.

Each has ``run(ctx: common.Context) -> dict`` (its entry in results.json; it may write files
under ``ctx.eval_dir`` and put image grids in ``ctx.images``) and ``markdown(result, settings)
-> str`` (its section of report.md). ``config.eval.evaluators`` names the ones that run, in
order; `mopoe_jax.evaluation.evaluate` restores the model once and calls them.
"""

from mopoe_jax.evaluation import coherence, generation, likelihood, probes

EVALUATORS = {
  "probes": probes,  # latent linear probes: the paper's Table 1
  "generation": generation,  # grids and reports generated from every subset and the prior
  "coherence": coherence,  # classifiers on generated modalities vs the source's labels
  "likelihood": likelihood,  # importance-sampled log p(x) per subset proposal
}
