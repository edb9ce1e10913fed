"""The README's main job needs nothing that setup.cfg does not declare.

A user's fresh install has exactly the closure of ``install_requires``: the packages it names and,
recursively, what those declare. A package that the job imports but nobody declares is present
on a developer's machine by accident and missing on the user's (tensorflow-datasets imports
``importlib_resources`` lazily, when a builder is built, without declaring it).

`main.py` runs here as the README's first command does, at the tiny size: a home directory of its
own (so tfds builds ``synthetic_cxr/tiny`` into ``~/tensorflow_datasets`` itself), training, then
every evaluator. Every module it imported from site-packages must belong to a distribution in
the closure of ``mopoe-jax`` without extras. In an environment made from setup.cfg alone the
same omission fails the run itself with a ModuleNotFoundError.
"""

import importlib.metadata
import json
import os
import re
import signal
import site
import subprocess
import sys
import textwrap

from conftest import REPO, signal_when, subprocess_env
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
import pytest

# Runs main.py with the given argv and, at exit, writes the files of every module imported after
# start-up (what the interpreter's own start-up imported, such as a .pth hook, is not the job's).
RECORDER = textwrap.dedent("""
    import atexit, json, runpy, sys
    out, argv = sys.argv[1], sys.argv[2:]
    before = set(sys.modules)

    def record():
      files = sorted({getattr(m, "__file__", None) or "" for n, m in list(sys.modules.items())
                      if n not in before and m is not None} - {""})
      with open(out, "w") as f:
        json.dump(files, f)

    atexit.register(record)
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")
    """)


def declared_closure(name: str, extras: frozenset = frozenset()) -> set[str]:
  """``name`` and every distribution its requirements bring in, recursively, with markers
  evaluated for this interpreter and the requested extras (a requirement whose distribution is
  not installed counts as declared: it is simply not needed here)."""
  seen, todo = set(), [(canonicalize_name(name), frozenset(extras))]
  done = set()
  while todo:
    dist_name, wanted = todo.pop()
    if (dist_name, wanted) in done:
      continue
    done.add((dist_name, wanted))
    seen.add(dist_name)
    try:
      requires = importlib.metadata.distribution(dist_name).requires or []
    except importlib.metadata.PackageNotFoundError:
      continue
    for text in requires:
      req = Requirement(text)
      contexts = [{"extra": ""}] + [{"extra": e} for e in wanted]
      if req.marker is None or any(req.marker.evaluate(c) for c in contexts):
        todo.append((canonicalize_name(req.name), frozenset(req.extras)))
  return seen


def owners_of(files) -> dict[str, str]:
  """{file: distribution} for the given files that lie in site-packages."""
  roots = [os.path.realpath(p) for p in site.getsitepackages()]
  wanted = {os.path.realpath(f) for f in files}
  wanted = {f for f in wanted if any(f.startswith(r + os.sep) for r in roots)}
  owners = {}
  for dist in importlib.metadata.distributions():
    root = os.path.realpath(dist.locate_file(""))
    for entry in dist.files or []:
      path = os.path.normpath(os.path.join(root, entry))
      if path in wanted:
        owners[path] = canonicalize_name(dist.metadata["Name"])
  missing = wanted - set(owners)
  assert not missing, f"files in site-packages that no installed distribution owns: {missing}"
  return owners


def test_declared_closure_follows_requirements_and_markers():
  closure = declared_closure("mopoe-jax")
  # Direct requirements, and what they bring in: jax requires jaxlib, flax requires msgpack.
  assert {"jax", "flax", "tensorflow-datasets", "importlib-resources"} <= closure
  assert {"jaxlib", "msgpack"} <= closure
  # The test extra is not part of a user's install; pytest is in it.
  assert "pytest" not in closure
  assert "pytest" in declared_closure("mopoe-jax", frozenset({"test"}))


@pytest.mark.slow  # main.py in a subprocess
@pytest.mark.timeout(900)
def test_the_readme_job_imports_only_declared_distributions(subprocess_cache_dir, tmp_path):
  home = tmp_path / "home"
  home.mkdir()
  workdir = tmp_path / "run"
  record = tmp_path / "imported.json"
  env = subprocess_env(HOME=str(home))
  env.pop("TFDS_DATA_DIR", None)
  command = [
    sys.executable,
    "-c",
    RECORDER,
    str(record),
    os.path.join(REPO, "main.py"),
    "--config=" + os.path.join(REPO, "configs", "tiny.py"),
    f"--workdir={workdir}",
    f"--config.train.compilation_cache_dir={subprocess_cache_dir}",
    "--config.train.num_steps=4",
    "--config.train.eval_every_steps=4",
    "--config.train.checkpoint_every_steps=4",
    "--config.train.log_every_steps=2",
    "--config.classifier.num_steps=2",
    "--config.eval.probes.repeats=2",
    # The programs of the other tests (the straight run's training, the evaluators'
    # programs of tests/test_evaluation.py): loaded from the session's compilation cache.
    "--config.eval.likelihood.samples=32",
  ]
  proc = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=850)
  assert proc.returncode == 0, proc.stderr[-6000:]
  log = proc.stderr

  # The README's promise: the dataset built on first use, and the log says where things went.
  assert (home / "tensorflow_datasets" / "synthetic_cxr" / "tiny").is_dir()
  for what in ("Checkpoints: ", "TensorBoard logs: ", "Tables: "):
    assert what in log, what
  assert (workdir / "eval" / "report.md").is_file()
  assert (workdir / "eval" / "probes_table1.png").is_file()

  with open(record) as f:
    files = json.load(f)
  owners = owners_of(files)
  assert "tensorflow-datasets" in owners.values() and "jax" in owners.values()
  # JAX imports every accelerator plugin that is installed (the jax_plugins it finds, with
  # JAX_PLATFORMS=cpu too): a user's choice of backend (the extras cuda12, cuda13, tpu; the test
  # extra's CUDA plugin), not an import of the job.
  closure = declared_closure("mopoe-jax") | {
    name
    for name in (canonicalize_name(d.metadata["Name"]) for d in importlib.metadata.distributions())
    if re.fullmatch(r"jax-(cuda|rocm)\d+-(plugin|pjrt)|libtpu", name)
  }
  undeclared = {}
  for path, dist in owners.items():
    if dist not in closure:
      undeclared.setdefault(dist, path)
  assert not undeclared, (
    "the README's job imports distributions that setup.cfg's install_requires does not bring "
    f"in (declare them): {undeclared}"
  )

  # A rerun of the finished run says so and stops before loading TensorFlow or the data.
  plain = [sys.executable, *command[4:]]  # main.py and its flags, without the import recorder
  again = subprocess.run(plain, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-4000:]
  assert "This run is finished: trained to step 4 and evaluated there" in again.stderr
  assert "Dataset synthetic_cxr/tiny" not in again.stderr and "Evaluator" not in again.stderr

  # Other evaluators make another run (the two cheapest: no scikit-learn, no classifiers):
  # killed (SIGKILL) in the middle of its evaluation, the next start evaluates again (training
  # is done), and only then is it finished.
  other = [*plain, "--config.eval.evaluators=('generation', 'likelihood')"]
  log_path = tmp_path / "killed.log"
  proc, sent, log = signal_when(
    other,
    log_path,
    lambda: "Evaluator generation done" in log_path.read_text(),
    signal.SIGKILL,
    timeout_s=600,
    env=env,
    cwd=tmp_path,
  )
  assert sent and proc.returncode == -signal.SIGKILL, log[-4000:]
  resumed = subprocess.run(
    other, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
  )
  assert resumed.returncode == 0, resumed.stderr[-4000:]
  assert "This run is finished" not in resumed.stderr
  assert "Evaluator likelihood done" in resumed.stderr and "Tables: " in resumed.stderr
  finished = subprocess.run(
    other, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
  )
  assert "This run is finished: trained to step 4" in finished.stderr, finished.stderr[-4000:]
