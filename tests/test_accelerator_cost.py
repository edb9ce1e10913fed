"""A TPU slice costed from this machine (benchmarks.costing.tpu_cost)."""

import importlib.util
import json
import subprocess
import sys

from conftest import REPO, subprocess_env
import pytest

from benchmarks.costing import tpu_cost


def test_the_largest_batch_is_where_the_memory_line_meets_the_hbm():
  gib = 2.0**30
  small = {"per_chip_batch": 8, "bytes_needed": 1 * gib + 8 * 0.5 * gib, "hbm_bytes": 16 * gib}
  large = dict(small, per_chip_batch=16, bytes_needed=1 * gib + 16 * 0.5 * gib)
  assert tpu_cost.largest_batch_estimate(small, large) == 30
  with pytest.raises(ValueError, match="did not grow"):
    tpu_cost.largest_batch_estimate(small, dict(small, per_chip_batch=16))


_COST = """
import json, sys
from configs import tiny
from benchmarks.costing import tpu_cost
print("RESULT", json.dumps(tpu_cost.cost_step(tiny.get_config(), 64, "v5e:2x2", 8)))
"""


@pytest.mark.slow  # XLA:TPU compiles the tiny step (about a minute on 2 cores)
@pytest.mark.timeout(600)
@pytest.mark.skipif(
  importlib.util.find_spec("libtpu") is None,
  reason="libtpu is not installed (pip install -e '.[tpu]')",
)
def test_the_tiny_step_compiles_for_a_v5e_slice_without_a_tpu():
  env = subprocess_env(PYTHONPATH=REPO, TPU_SKIP_MDS_QUERY="1")
  env.pop("JAX_PLATFORMS", None)
  out = subprocess.run(
    [sys.executable, "-c", _COST], env=env, cwd=REPO, capture_output=True, text=True, timeout=540
  )
  assert out.returncode == 0, out.stderr[-3000:]
  line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
  r = json.loads(line[len("RESULT ") :])
  assert r["chips"] == 4 and r["global_batch"] == 32 and r["fits"]
  assert 0 < r["bytes_needed"] < r["hbm_bytes"] and r["flops"] > 0 and r["bytes_accessed"] > 0
  assert r["roofline_step_seconds"] > 0 and r["bound_by"] in ("compute", "HBM bandwidth")
