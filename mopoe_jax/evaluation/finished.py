"""A finished run, recognised on a rerun: trained to its last step and evaluated there.

`main.py` (``--mode=train_and_evaluate``) records the run as finished once the evaluation has
returned (`mark_finished`: the evaluated step and the config), and on its next start asks
`finished_step` before it loads anything: the same config, with no checkpoint newer than the
evaluated step, is a finished run, and the command says so and exits in seconds. An evaluation
killed midway never wrote the record (or wrote one for an older step or another config), so the
next start evaluates again.
"""

from __future__ import annotations

import json

import ml_collections

from mopoe_jax.platform import paths

FINISHED_FILE = "run_finished.json"


def _config_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(json.loads(config.to_json_best_effort()), sort_keys=True)


def _checkpoint_steps(workdir: str) -> list[int]:
  directory = paths.join(paths.resolve(workdir), "checkpoints")
  if not paths.exists(directory):
    return []
  from etils import epath  # pylint: disable=g-import-not-at-top

  return sorted(int(p.name) for p in epath.Path(directory).iterdir() if p.name.isdigit())


def mark_finished(config: ml_collections.ConfigDict, workdir: str, step: int) -> None:
  """Records that the run of ``config`` in ``workdir`` is trained and evaluated at ``step``."""
  record = {"step": int(step), "config": _config_json(config)}
  paths.write_text(paths.join(paths.resolve(workdir), FINISHED_FILE), json.dumps(record))


def finished_step(config: ml_collections.ConfigDict, workdir: str) -> int | None:
  """The step at which this run finished (trained and evaluated with this very config, and no
  newer checkpoint since), or None when there is work left."""
  path = paths.join(paths.resolve(workdir), FINISHED_FILE)
  if not paths.exists(path):
    return None
  try:
    record = json.loads(paths.read_text(path))
  except ValueError:
    return None  # a damaged record: evaluate again rather than trust it
  if record.get("config") != _config_json(config):
    return None
  steps = _checkpoint_steps(workdir)
  if not steps or steps[-1] != record.get("step"):
    return None
  return int(record["step"])
