"""Paths that are URIs stay URIs (mopoe_jax.platform.paths and every place that builds a path)."""

import ast
import os
import pathlib

import jax

from configs import tiny
from mopoe_jax.evaluation import classifiers
from mopoe_jax.platform import compilation, paths
from mopoe_jax.training import checkpointing, model_file

REPO = pathlib.Path(__file__).resolve().parents[1]
RUN = "gs://bucket/runs/tiny"


def test_uris_are_kept_and_local_paths_made_absolute(tmp_path, monkeypatch):
  assert paths.is_uri(RUN) and paths.is_uri("s3://b/x") and not paths.is_uri("/tmp/gs:/x")
  assert paths.resolve(RUN) == RUN
  assert paths.join(RUN, "eval", "probes.md") == f"{RUN}/eval/probes.md"
  monkeypatch.chdir(tmp_path)
  assert paths.resolve("runs/x") == str(tmp_path / "runs" / "x")
  assert paths.resolve("~/x") == os.path.join(os.path.expanduser("~"), "x")


def test_every_workdir_path_of_a_gs_run_is_in_the_bucket():
  config = tiny.get_config()
  assert checkpointing.checkpoint_dir(RUN) == f"{RUN}/checkpoints"
  assert model_file.path(RUN) == f"{RUN}/model.json"
  assert classifiers.classifier_dir_from_config(config, RUN) == f"{RUN}/classifiers"
  previous = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", f"{RUN}/xla_cache")
  try:
    assert compilation.stored_programs_dir() == f"{RUN}/xla_cache/lowered"
  finally:
    jax.config.update("jax_compilation_cache_dir", previous)
  stored = compilation.StoredProgram(
    lambda x: x, name="p", key="k", directory=f"{RUN}/xla_cache/lowered"
  )
  assert stored.path == f"{RUN}/xla_cache/lowered/p-k.jaxexport"


def test_local_writes_are_atomic_and_create_their_folder(tmp_path):
  target = tmp_path / "a" / "b" / "x.json"
  paths.write_text(target, "{}")
  paths.write_text(target, '{"v": 1}')
  assert paths.read_text(target) == '{"v": 1}' and os.listdir(target.parent) == ["x.json"]


# Where a user's path may be a URI, these calls would make it a local one (or fail on it).
_LOCAL_ONLY = {
  "os.path.abspath",
  "os.makedirs",
  "os.mkdir",
  "os.replace",
  "os.rename",
  "os.listdir",
  "os.scandir",
  "os.remove",
  "open",
}
# Local by nature: the paths module itself; inference's study folders (the user's own files);
# the package's own source (keys of stored programs); the PCI bus (is this a Cloud TPU VM?).
_ALLOWED = {
  ("mopoe_jax/platform/paths.py", None),
  ("mopoe_jax/inference.py", None),
  ("mopoe_jax/platform/compilation.py", "source_digest"),
  ("mopoe_jax/platform/runtime.py", "_tpu_chips_present"),
}


class _LocalOnlyCalls(ast.NodeVisitor):
  """(innermost enclosing function or None, call) of every call in `_LOCAL_ONLY`."""

  def __init__(self):
    self.stack, self.found = [None], set()

  def visit_FunctionDef(self, node):  # pylint: disable=invalid-name
    self.stack.append(node.name)
    self.generic_visit(node)
    self.stack.pop()

  def visit_Call(self, node):  # pylint: disable=invalid-name
    if ast.unparse(node.func) in _LOCAL_ONLY:
      self.found.add((self.stack[-1], ast.unparse(node.func)))
    self.generic_visit(node)


def test_no_workdir_path_goes_through_local_only_calls():
  found = set()
  for path in [REPO / "main.py", *sorted((REPO / "mopoe_jax").rglob("*.py"))]:
    name = str(path.relative_to(REPO))
    if (name, None) in _ALLOWED:
      continue
    visitor = _LocalOnlyCalls()
    visitor.visit(ast.parse(path.read_text()))
    found |= {(name, function) for function, _ in visitor.found}
  assert found <= _ALLOWED, sorted(found - _ALLOWED)
