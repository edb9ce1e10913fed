"""The code's checks that are not tests: ruff (lint and format) and the wings' import contracts.

Run with the suite so that CI (.ci/run) fails on a lint error, an unformatted file or an import
that goes up a layer (docs/architecture.md).
"""

import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
  path = shutil.which(name, path=str(pathlib.Path(sys.executable).parent)) or shutil.which(name)
  if path is None:
    pytest.fail(f"{name} is not installed: it is in the `test` extra (pip install -e '.[test]')")
  return path


@pytest.mark.parametrize(
  "command",
  [("ruff", "check", "."), ("ruff", "format", "--check", "."), ("lint-imports",)],
  ids=["ruff-check", "ruff-format", "import-contracts"],
)
def test_check_passes(command):
  result = subprocess.run(
    (_tool(command[0]), *command[1:]), cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_the_contracts_catch_an_upward_import(tmp_path):
  """The layers contract is live: a copy of the library where the model imports evaluation
  breaks it (lint-imports exits non-zero)."""
  copy = tmp_path / "repo"
  shutil.copytree(REPO / "mopoe_jax", copy / "mopoe_jax")
  shutil.copy(REPO / "setup.cfg", copy / "setup.cfg")
  fusion = copy / "mopoe_jax" / "vae" / "fusion.py"
  fusion.write_text(fusion.read_text() + "\nfrom mopoe_jax.evaluation import common  # noqa\n")
  result = subprocess.run(
    (_tool("lint-imports"),),
    cwd=copy,
    capture_output=True,
    text=True,
    timeout=300,
    env={"PYTHONPATH": str(copy), "PATH": ""},
  )
  assert result.returncode != 0
  assert "mopoe_jax.vae.fusion -> mopoe_jax.evaluation.common" in result.stdout
