"""Evaluation of a trained model: restore once, run the configured evaluators, write the report.

`run_evaluation` runs the evaluators named in ``config.eval.evaluators`` through the interface
of `mopoe_jax.evaluation.common.Evaluator` (the registry, `mopoe_jax.evaluation.registry`, knows
which there are; nothing here knows any one of them) and writes, under ``<workdir>/eval/``:
  results.json        every evaluator's results in one JSON document
  report.md           a readable summary: one section per evaluator, with links to its files
and the evaluators write their own files beside them; those registered now:
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

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from mopoe_jax.data import labels
from mopoe_jax.data.datasource import DataSource
from mopoe_jax.evaluation import registry, retired
from mopoe_jax.evaluation.common import Context, Result, write_json
from mopoe_jax.platform import paths
from mopoe_jax.training import checkpointing, model_file, restore
from mopoe_jax.vae import model as model_lib

EVAL_DIR = "eval"
_DONE_BARRIER = "mopoe_evaluation_done"


def check_eval_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field when ``config.eval`` asks for something unknown: an
  evaluator that is not registered, a field that is neither shared (`registry.SHARED_FIELDS`)
  nor an evaluator's section (a retired flat field is named with its new place), a section's
  unknown field, or a value the evaluator's own `Evaluator.check` refuses."""
  ev = config.eval
  evaluators = registry.EVALUATORS
  unknown = [e for e in ev.evaluators if e not in evaluators]
  if unknown:
    raise ValueError(
      f"config.eval.evaluators has unknown entries {unknown}; choose from {list(evaluators)}."
    )
  for field in ev:
    if field in registry.SHARED_FIELDS or field in evaluators:
      continue
    raise ValueError(
      retired.retired_message(field)
      or (
        f"config.eval.{field} is not a field: config.eval has {list(registry.SHARED_FIELDS)} "
        f"and a section per evaluator ({', '.join(f'eval.{n}' for n in evaluators)})."
      )
    )
  if config.data.finding_rule not in labels.FINDING_RULES:
    raise ValueError(
      f"config.data.finding_rule must be one of {labels.FINDING_RULES}, got "
      f"{config.data.finding_rule!r}."
    )
  config = registry.with_defaults(config)
  for name in config.eval.evaluators:
    evaluator = evaluators[name]
    fields = set(evaluator.default_config())
    unknown = sorted(set(config.eval[name]) - fields)
    if unknown:
      raise ValueError(
        f"config.eval.{name} has no field {', '.join(unknown)}; its fields: {sorted(fields)}."
      )
    evaluator.check(config)


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
  """Checks ``config.eval`` (`check_eval_config`), runs its evaluators and writes the results.

  Args:
    config: the run's config (``data``, ``model``, ``eval``, ``classifier``).
    workdir: outputs go to ``<workdir>/eval/``; classifiers to ``<workdir>/classifiers/``
      unless ``classifier.checkpoint_dir`` is set.
    model: the `MoPoE` module; variables: its restored {'params', 'batch_stats'}.
    data: the dataset (`mopoe_jax.data.datasource.DataSource`).
    writer: a clu metric writer for scalars and images (optional); step: their step.

  Returns:
    The results written to ``<workdir>/eval/results.json``: 'settings', and one entry per
    evaluator that ran (its `Result.to_json()`).
  """
  check_eval_config(config)
  return _run_checked(config, workdir, model, variables, data, writer, step=step)


def _run_checked(config, workdir, model, variables, data, writer, *, step: int) -> dict:
  """`run_evaluation` of a config that `check_eval_config` passed."""
  config = registry.with_defaults(config)
  ev = config.eval
  selected = {name: registry.EVALUATORS[name] for name in ev.evaluators}
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
    keep_complete=max([e.test_studies_kept(config) for e in selected.values()], default=0),
  )
  settings = {
    "dataset": data.name,
    "test_split": config.data.test_split,
    "modalities": list(model.modalities),
    "subsets": ctx.subset_names,
    "step": step,
    "eval": ev.to_dict(),
  }
  outcomes: dict[str, Result] = {}
  start = time.perf_counter()
  for name, evaluator in selected.items():
    tic = time.perf_counter()
    outcomes[name] = evaluator.run(ctx)
    logging.info("Evaluator %s done (%.0f s).", name, time.perf_counter() - tic)

  settings["seconds"] = time.perf_counter() - start
  results = {"settings": settings, **{name: r.to_json() for name, r in outcomes.items()}}
  write_json(paths.join(eval_dir, "results.json"), results)
  paths.write_text(paths.join(eval_dir, "report.md"), report_markdown(outcomes, settings))
  if writer is not None:
    writer.write_scalars(step, summary_scalars(outcomes))
    if ctx.images:
      writer.write_images(step, {f"eval_generation/{k}": g[None] for k, g in ctx.images.items()})
    writer.flush()
  logging.info("Evaluation written to %s (%.0f s).", eval_dir, time.perf_counter() - start)
  return results


def summary_scalars(outcomes: dict[str, Result]) -> dict[str, float]:
  """Every evaluator's headline numbers (`Evaluator.summary_scalars`) as flat scalars for
  TensorBoard, None values left out; ``outcomes``: evaluator name -> its result."""
  scalars = {}
  for name, result in outcomes.items():
    scalars.update(registry.EVALUATORS[name].summary_scalars(result))
  return {k: float(v) for k, v in scalars.items() if v is not None}


def report_markdown(outcomes: dict[str, Result], settings: dict) -> str:
  """A readable summary (report.md): one section per evaluator that ran, in the registry's order
  (``outcomes``: evaluator name -> its result; ``settings``: results.json's "settings")."""
  s = settings
  out = [f"# Evaluation of MoPoE on {s['dataset']} ({s['test_split']} split, step {s['step']})", ""]
  for name, evaluator in registry.EVALUATORS.items():
    if name in outcomes:
      out.append(evaluator.markdown(outcomes[name], s))
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
  check_eval_config(config)  # on every process, before anything waits or loads
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
  results = _run_checked(config, workdir, model, variables, data, writer, step=step)
  eval_dir = paths.join(paths.resolve(workdir), EVAL_DIR)
  logging.info(
    "Tables: %s; every number: %s; each evaluator's files beside them.",
    paths.join(eval_dir, "report.md"),
    paths.join(eval_dir, "results.json"),
  )
  return results
