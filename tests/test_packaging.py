"""setup.cfg declares what the code imports: the library's imports in install_requires, the
tests' in the `test` extra, and nothing declared that nothing imports."""

import ast
import configparser
import functools
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
  "importlib_resources": "tensorflow-datasets imports it without declaring it "
  "(tests/test_fresh_install.py)",
  "gcsfs": "etils.epath's fsspec backend loads it for gs:// paths (tests/test_gcs.py)",
  "ruff": "run as a command by tests/test_lint.py",
  "import-linter": "run as a command (lint-imports) by tests/test_lint.py",
}
# Import names whose distribution is named differently and may not be installed here.
ALIASES = {
  "tensorflow": {"tensorflow", "tensorflow-cpu"},
  "sklearn": {"scikit-learn"},
  "PIL": {"pillow"},
  "absl": {"absl-py"},
  "orbax": {"orbax-checkpoint"},
  "ml_collections": {"ml-collections"},
  "tensorflow_datasets": {"tensorflow-datasets"},
}


def _requirements(value: str) -> set[str]:
  names = set()
  for line in value.strip().splitlines():
    line = line.strip()
    if line and not line.startswith("#"):
      names.add(re.split(r"[\s<>=!\[;]", line, maxsplit=1)[0].lower())
  return names


def _third_party_imports(paths) -> set[str]:
  # The repository's packages, and the helper modules of tests/ (conftest, two_shards, ...).
  local = {"mopoe_jax", "input_pipeline", "configs", "benchmarks"} | {
    p.stem for p in (REPO / "tests").glob("*.py")
  }
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


@functools.cache
def _packages_distributions() -> dict:
  return importlib.metadata.packages_distributions()  # reads every installed RECORD: slow


def _distributions(import_name: str) -> set[str]:
  known = {d.lower() for d in _packages_distributions().get(import_name, [])}
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
  in_library_only = {
    n for n in test_imports if _distributions(n) & install and n not in runtime_imports
  }
  assert not in_library_only, f"test-only imports in install_requires: {in_library_only}"

  imported = set()
  for name in runtime_imports:
    imported |= _distributions(name)
  unused = install - imported - set(NOT_IMPORTED)
  assert not unused, f"declared in install_requires but imported nowhere: {unused}"
  unused = (
    test_extra
    - {d for n in test_imports for d in _distributions(n)}
    - {"pytest-timeout", "pytest-xdist"}  # pytest plugins
    - {"jax"}  # jax[cuda12-local]: for JAX's CUDA plugin, which JAX loads
    - set(NOT_IMPORTED)
  )
  assert not unused, f"declared in the test extra but imported by no test: {unused}"


def test_the_locks_pin_every_declared_package_for_their_python():
  """constraints.txt includes one lock per tested Python; each pins every package of
  install_requires and the test extra that applies on x86-64 Linux, and only for its Python."""
  from packaging.requirements import Requirement  # pylint: disable=g-import-not-at-top
  from packaging.utils import canonicalize_name  # pylint: disable=g-import-not-at-top

  included = [
    line.split(None, 1)[1]
    for line in (REPO / "constraints.txt").read_text().splitlines()
    if line.startswith("-c ")
  ]
  assert included == ["constraints/py3.11.txt", "constraints/py3.12.txt"]
  cfg = configparser.ConfigParser()
  cfg.read(REPO / "setup.cfg")
  declared = [
    Requirement(line.strip())
    for value in (cfg["options"]["install_requires"], cfg["options.extras_require"]["test"])
    for line in value.splitlines()
    if line.strip() and not line.strip().startswith("#")
  ]
  for path in included:
    version = re.fullmatch(r"constraints/py(3\.\d+)\.txt", path).group(1)
    environment = {
      "python_version": version,
      "sys_platform": "linux",
      "platform_machine": "x86_64",
      "extra": "",
    }
    pins = {}
    for line in (REPO / path).read_text().splitlines():
      if line and not line.startswith("#"):
        req = Requirement(line)
        [spec] = req.specifier
        assert spec.operator == "==", line
        assert req.marker.evaluate(environment), line
        assert not req.marker.evaluate(dict(environment, python_version="3.99")), line
        assert not req.marker.evaluate(dict(environment, platform_machine="aarch64")), line
        pins[canonicalize_name(req.name)] = spec.version
    wanted = {
      canonicalize_name(r.name)
      for r in declared
      if r.marker is None or r.marker.evaluate(environment)
    }
    assert wanted <= set(pins), (path, wanted - set(pins))
    for req in declared:  # the pinned versions satisfy setup.cfg's ranges
      if canonicalize_name(req.name) in pins:
        assert req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True), (
          path,
          req,
        )
