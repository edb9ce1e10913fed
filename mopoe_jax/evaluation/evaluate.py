"""Evaluation of a trained model: restore once, run the configured evaluators, write the report.

`run_evaluation` runs the evaluators named in ``config.eval.evaluators``
(`mopoe_jax.evaluation.registry`) and writes, under ``<workdir>/eval/``:
  results.json        every evaluator's results in one JSON document
  report.md           a readable summary with the tables and links to the PNGs
  probes.json/.md     latent linear probes (the paper's Table 1 and the full per-label table)
  probes_table1.png   Table 1 as a bar chart (mean and interval per subset, random baseline)
  generation/         PNG grids and generated reports: from_<subset>.png/.md, prior.png/.md
`evaluate` restores the parameters and batch statistics of a checkpoint first.

Every pass over a split runs on this process alone (the whole split, not a process shard), in
the split's fixed order; nothing here needs an accelerator. With several processes, process 0
evaluates while the others wait for it (`evaluate`).
"""

from __future__ import annotations

import time
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from mopoe_jax.data import labels
from mopoe_jax.data.datasource import DataSource
from mopoe_jax.evaluation.common import HEADLINE_LABEL, Context, write_json
from mopoe_jax.evaluation.generation import GENERATION_DIR
from mopoe_jax.evaluation.registry import EVALUATORS
from mopoe_jax.platform import paths
from mopoe_jax.training import checkpointing, model_file, restore
from mopoe_jax.vae import model as model_lib
from mopoe_jax.vae.latents import LATENTS

EVAL_DIR = "eval"
_DONE_BARRIER = "mopoe_evaluation_done"


def check_eval_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field when ``config.eval`` asks for something unknown."""
  ev = config.eval
  unknown = [e for e in ev.evaluators if e not in EVALUATORS]
  if unknown:
    raise ValueError(
      f"config.eval.evaluators has unknown entries {unknown}; choose from {sorted(EVALUATORS)}."
    )
  if config.data.finding_rule not in labels.FINDING_RULES:
    raise ValueError(
      f"config.data.finding_rule must be one of {labels.FINDING_RULES}, got "
      f"{config.data.finding_rule!r}."
    )
  if ev.probe_repeats < 1 or ev.probe_train_examples < 1:
    raise ValueError(
      f"config.eval.probe_repeats and probe_train_examples must be >= 1, got "
      f"{ev.probe_repeats} and {ev.probe_train_examples}."
    )
  if ev.generation_latent not in LATENTS:
    raise ValueError(
      f"eval.generation_latent must be one of {LATENTS}, got {ev.generation_latent!r}."
    )


def run_evaluation(
  config: ml_collections.ConfigDict,
  workdir: str,
  model: model_lib.MoPoE,
  variables,
  data: DataSource,
  writer=None,
  *,
  step: int = 0,
) -> dict:
  """Runs the evaluators of ``config.eval.evaluators`` and writes the results.

  Args:
    config: the run's config (``data``, ``model``, ``eval``, ``classifier``).
    workdir: outputs go to ``<workdir>/eval/``; classifiers to ``<workdir>/classifiers/``
      unless ``classifier.checkpoint_dir`` is set.
    model: the `MoPoE` module; variables: its restored {'params', 'batch_stats'}.
    data: the dataset (`mopoe_jax.data.datasource.DataSource`).
    writer: a clu metric writer for scalars and images (optional); step: their step.

  Returns:
    The results dict written to ``<workdir>/eval/results.json``: 'settings', and one entry per
    evaluator that ran.
  """
  check_eval_config(config)
  ev = config.eval
  eval_dir = paths.makedirs(paths.join(paths.resolve(workdir), EVAL_DIR))
  ctx = Context(
    config=config,
    model=model,
    variables=variables,
    data=data,
    eval_dir=eval_dir,
    workdir=workdir,
    rng=jax.random.key(ev.seed),
    step=step,
  )
  results: dict[str, Any] = {
    "settings": {
      "dataset": data.name,
      "test_split": config.data.test_split,
      "modalities": list(model.modalities),
      "subsets": ctx.subset_names,
      "step": step,
      "eval": ev.to_dict(),
    }
  }
  start = time.perf_counter()
  for name in ev.evaluators:
    tic = time.perf_counter()
    results[name] = EVALUATORS[name].run(ctx)
    logging.info("Evaluator %s done (%.0f s).", name, time.perf_counter() - tic)

  results["settings"]["seconds"] = time.perf_counter() - start
  write_json(paths.join(eval_dir, "results.json"), results)
  paths.write_text(paths.join(eval_dir, "report.md"), report_markdown(results))
  if writer is not None:
    writer.write_scalars(step, summary_scalars(results))
    if ctx.images:
      writer.write_images(step, {f"eval_generation/{k}": g[None] for k, g in ctx.images.items()})
    writer.flush()
  logging.info("Evaluation written to %s (%.0f s).", eval_dir, time.perf_counter() - start)
  return results


def summary_scalars(results: dict) -> dict[str, float]:
  """The headline numbers as flat scalars for TensorBoard (None values left out)."""
  scalars = {}
  for name, scores in results.get("probes", {}).get("subsets", {}).items():
    scalars[f"eval_probe_ap/{name}/{HEADLINE_LABEL}"] = scores.get(HEADLINE_LABEL)
  difference = (
    results.get("probes", {}).get("difference", {}).get("standard", {}).get(HEADLINE_LABEL)
  )
  if difference:
    scalars[f"eval_probe_ap/full_minus_best_single/{HEADLINE_LABEL}"] = difference["mean"]
  for name, per_modality in results.get("coherence", {}).get("subsets", {}).items():
    for m, scores in per_modality.items():
      scalars[f"eval_coherence_ap/{name}->{m}/{HEADLINE_LABEL}"] = scores.get(HEADLINE_LABEL)
  for name, entry in results.get("likelihood", {}).get("subsets", {}).items():
    for target, values in entry.items():
      if values:
        scalars[f"eval_log_px/{name}/{target}"] = values["log_px"]
        scalars[f"eval_elbo/{name}/{target}"] = values["elbo"]
  return {k: float(v) for k, v in scalars.items() if v is not None}


# The order of the report's sections.
_REPORT_ORDER = ("probes", "coherence", "likelihood", "generation")


def report_markdown(results: dict) -> str:
  """A readable summary of ``results`` (report.md): one section per evaluator that ran."""
  s = results["settings"]
  out = [f"# Evaluation of MoPoE on {s['dataset']} ({s['test_split']} split, step {s['step']})", ""]
  for name in _REPORT_ORDER:
    if name in results:
      out.append(EVALUATORS[name].markdown(results[name], s))
  return "\n".join(out) + "\n"


def _wait_for_process_0(seconds: int) -> None:
  """On processes other than 0: waits (at most ``seconds``) for process 0's evaluation."""
  logging.info(
    "Process %d: process 0 evaluates; waiting for it (at most %d s, "
    "config.eval.multihost_wait_seconds).",
    jax.process_index(),
    seconds,
  )
  try:
    ocp.multihost.sync_global_processes(
      _DONE_BARRIER, timeout=int(seconds), processes=set(range(jax.process_count()))
    )
  except Exception as e:  # the coordination service's error: a timeout, or process 0 gone
    raise RuntimeError(
      f"Process {jax.process_index()}: process 0's evaluation did not finish within "
      f"{seconds} s ({checkpointing.failure_reason(e)}). If it is still running, raise "
      "--config.eval.multihost_wait_seconds; otherwise see process 0's log."
    ) from e
  if not int(multihost_utils.broadcast_one_to_all(np.int32(0))):
    raise RuntimeError(
      f"Process {jax.process_index()}: process 0's evaluation failed; see its log."
    )
  logging.info("Process %d: process 0's evaluation finished.", jax.process_index())


def _release_other_processes(ok: bool, seconds: int) -> None:
  """On process 0 after its evaluation: lets the waiting processes go, telling them ``ok``."""
  ocp.multihost.sync_global_processes(
    _DONE_BARRIER, timeout=int(seconds), processes=set(range(jax.process_count()))
  )
  multihost_utils.broadcast_one_to_all(np.int32(ok))


def evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  data: DataSource,
  writer=None,
  step: int | None = None,
) -> dict:
  """Restores a checkpoint of ``workdir`` (parameters and batch statistics only) on this host's
  first device and runs `run_evaluation` (``writer``: an optional clu metric writer for the
  headline scalars and the grids). Works on a CPU for checkpoints trained on accelerators.

  The checkpoint is ``step`` or ``config.eval.checkpoint_step`` when given, else the newest one
  that restores (a newer one that cannot be read is logged in one line and skipped). Its recorded
  shape fields are checked against ``config`` before any array is read. With several processes,
  process 0 evaluates and the others wait for it (``config.eval.multihost_wait_seconds``); every
  process returns when it is done (the others with ``{}``), or raises if it failed.
  """
  check_eval_config(config)
  multihost = jax.process_count() > 1
  if multihost and jax.process_index() != 0:
    _wait_for_process_0(config.eval.multihost_wait_seconds)
    return {}
  ok = False
  try:
    results = _evaluate_here(config, workdir, data, writer, step)
    ok = True
  finally:
    if multihost:
      _release_other_processes(ok, config.eval.multihost_wait_seconds)
  return results


def _evaluate_here(config, workdir: str, data: DataSource, writer, step: int | None) -> dict:
  step, model, variables = restore.restore_model(
    config, workdir, dataset=data.name, vocab_size=len(data.vocab), step=step
  )
  model_file.write(workdir, config, data.vocab.words, data.name, missing_only=True)
  results = run_evaluation(config, workdir, model, variables, data, writer, step=step)
  eval_dir = paths.join(paths.resolve(workdir), EVAL_DIR)
  logging.info(
    "Tables: %s (report.md, probes.md); JSON: results.json, probes.json; images and "
    "generated reports: %s",
    eval_dir,
    paths.join(eval_dir, GENERATION_DIR),
  )
  return results
