"""The suite's own machinery (tests/conftest.py): how many pytest-xdist workers `-n auto` starts,
the modules that go first, and a background run shared by the workers (it runs once; the ones
that wait for it get its workdir)."""

import os
import sys
import threading
import time

from conftest import LONGEST_FIRST, MAX_WORKERS, BackgroundRun, pytest_xdist_auto_num_workers

# Appends one line to ``count`` after half a second: how many times the command ran.
COMMAND = "import sys, time; time.sleep(0.5); open(sys.argv[1], 'a').write('ran\\n')"


def _run(tmp_path, shared, command=COMMAND):
  count = tmp_path / "count"
  return count, BackgroundRun(
    [sys.executable, "-c", command, str(count)],
    str(tmp_path / "workdir"),
    str(tmp_path / "run.log"),
    env=None,
    timeout_s=60,
    shared=str(shared),
  )


def test_a_shared_run_runs_once_and_the_other_worker_waits_for_it(tmp_path):
  shared = tmp_path / "shared"
  shared.mkdir()
  count, first = _run(tmp_path, shared)
  _, second = _run(tmp_path, shared)  # another worker: its own lock file description
  first.start()
  second.start()  # the first holds the lock: nothing starts
  tic = time.monotonic()
  waited = {}
  thread = threading.Thread(target=lambda: waited.update(workdir=second.workdir()))
  thread.start()
  assert first.workdir() == str(tmp_path / "workdir")
  thread.join(timeout=30)
  assert waited == {"workdir": str(tmp_path / "workdir")}
  assert time.monotonic() - tic >= 0.5  # the second waited for the run to end
  assert count.read_text() == "ran\n"  # once
  # Later starts (a third worker) find it done and run nothing either.
  _, third = _run(tmp_path, shared)
  third.start()
  assert third.workdir() == str(tmp_path / "workdir") and count.read_text() == "ran\n"


def test_a_failed_shared_run_is_run_again_by_the_worker_that_waited(tmp_path):
  shared = tmp_path / "shared"
  shared.mkdir()
  count, first = _run(tmp_path, shared, COMMAND + "; sys.exit(3)")
  first.start()
  try:
    first.workdir()
  except AssertionError:
    pass
  else:
    raise AssertionError("a run that exited 3 passed")
  assert not (shared / "done").exists()
  _, second = _run(tmp_path, shared)
  assert second.workdir() == str(tmp_path / "workdir")
  assert count.read_text() == "ran\nran\n" and (shared / "done").exists()


def test_the_longest_modules_first_names_existing_modules(request):
  tests = request.config.rootpath / "tests"
  assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
  assert all((tests / f"{name}.py").is_file() for name in LONGEST_FIRST), LONGEST_FIRST


def test_auto_workers_follow_the_cores_up_to_the_cap(monkeypatch):
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
  assert pytest_xdist_auto_num_workers(None) == 2
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
  assert pytest_xdist_auto_num_workers(None) == MAX_WORKERS
  monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS has no affinity
  monkeypatch.setattr(os, "cpu_count", lambda: 3)
  assert pytest_xdist_auto_num_workers(None) == min(3, MAX_WORKERS)
  monkeypatch.setattr(os, "cpu_count", lambda: None)
  assert pytest_xdist_auto_num_workers(None) == 1
