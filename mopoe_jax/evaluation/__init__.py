"""The evaluation wing: a trained checkpoint measured, Table 1 and the rest.

`evaluate.evaluate` restores once and runs the evaluators named by ``eval.evaluators``: the
latent linear probes (`probes`, written out by `probes_markdown` and `charts`), generation
(`generation`), coherence with its classifiers (`coherence`, `classifiers`) and the test
likelihood (`likelihood`), each a `common.Evaluator` with its own section of ``config.eval``;
`registry` is where an evaluator is registered, `common` what they share (the evaluator base,
the encoded split, the run context), `retired` the flat ``config.eval`` fields of earlier
versions with their new names.

May import: `mopoe_jax.training`, `mopoe_jax.vae`, `mopoe_jax.data`, `mopoe_jax.platform`; not
`mopoe_jax.inference`.
"""
