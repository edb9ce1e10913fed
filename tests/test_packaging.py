"""setup.cfg declares what the code imports: the library's imports in install_requires, the
tests' in the `test` extra, and nothing declared that nothing imports."""

import ast
import configparser
import importlib.metadata
import pathlib
import re
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
RUNTIME_CODE = ["mopoe_jax", "input_pipeline", "configs", "main.py"]
# Declared without being imported by name, and why.
NOT_IMPORTED = {
    "tensorboard": "clu's metric writers need it installed to write event files",
    "etils": "imported as `from etils import epath`, declared with its epath extra",
}
# Import names whose distribution is named differently and may not be installed here.
ALIASES = {"tensorflow": {"tensorflow", "tensorflow-cpu"}, "sklearn": {"scikit-learn"},
           "PIL": {"pillow"}, "absl": {"absl-py"}, "orbax": {"orbax-checkpoint"},
           "ml_collections": {"ml-collections"}, "tensorflow_datasets": {"tensorflow-datasets"}}


def _requirements(value: str) -> set[str]:
  names = set()
  for line in value.strip().splitlines():
    line = line.strip()
    if line and not line.startswith("#"):
      names.add(re.split(r"[\s<>=!\[;]", line, maxsplit=1)[0].lower())
  return names


def _third_party_imports(paths) -> set[str]:
  local = {"mopoe_jax", "input_pipeline", "configs", "conftest", "two_shards", "benchmarks"}
  names = set()
  for path in paths:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        found = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        found = [node.module]
      else:
        continue
      for name in found:
        top = name.split(".")[0]
        if top not in local and top not in sys.stdlib_module_names:
          names.add(top)
  return names


def _files(entries):
  for entry in entries:
    path = REPO / entry
    yield from (sorted(path.rglob("*.py")) if path.is_dir() else [path])


def _distributions(import_name: str) -> set[str]:
  known = {d.lower() for d in importlib.metadata.packages_distributions().get(import_name, [])}
  return {d.replace("_", "-") for d in known} | ALIASES.get(import_name, set())


def test_declared_dependencies_match_the_imports():
  cfg = configparser.ConfigParser()
  cfg.read(REPO / "setup.cfg")
  install = _requirements(cfg["options"]["install_requires"])
  test_extra = _requirements(cfg["options.extras_require"]["test"])
  runtime_imports = _third_party_imports(_files(RUNTIME_CODE))
  test_imports = _third_party_imports(_files(["tests"])) - runtime_imports

  missing = {n for n in runtime_imports if not _distributions(n) & install}
  assert not missing, f"imported by the library but not in install_requires: {missing}"
  missing = {n for n in test_imports if not _distributions(n) & (install | test_extra)}
  assert not missing, f"imported by the tests but not declared: {missing}"
  in_library_only = {n for n in test_imports if _distributions(n) & install
                     and n not in runtime_imports}
  assert not in_library_only, f"test-only imports in install_requires: {in_library_only}"

  imported = set()
  for name in runtime_imports:
    imported |= _distributions(name)
  unused = install - imported - set(NOT_IMPORTED)
  assert not unused, f"declared in install_requires but imported nowhere: {unused}"
  unused = test_extra - {d for n in test_imports for d in _distributions(n)} - {"pytest-timeout"}
  assert not unused, f"declared in the test extra but imported by no test: {unused}"
