"""TPU slices and NVIDIA GPUs costed from this machine (benchmarks.costing, accelerator_cost)."""

import importlib.util
import json
import os
import subprocess
import sys

from conftest import REPO, gpu_plugin_missing, subprocess_env
import pytest

from benchmarks import accelerator_cost
from benchmarks.costing import gpu_targets, step_cost


def test_the_largest_batch_is_where_the_memory_line_meets_the_capacity():
  gib = 2.0**30
  small = {"per_device_batch": 8, "bytes_needed": 1 * gib + 8 * 0.5 * gib}
  large = dict(small, per_device_batch=16, bytes_needed=1 * gib + 16 * 0.5 * gib)
  assert step_cost.largest_batch_estimate(small, large, 16 * gib) == 30
  with pytest.raises(ValueError, match="did not grow"):
    step_cost.largest_batch_estimate(small, dict(small, per_device_batch=16), 16 * gib)


def test_the_gpu_specs_differ_only_in_memory_and_give_the_data_sheets_peak():
  h100, h200 = (gpu_targets.target_config(g).splitlines() for g in ("h100", "h200"))
  assert "collective_memory_granularity" not in "\n".join(h100)  # the 0.10.2 plugin rejects it
  differing = {a.split(":")[0].strip() for a, b in zip(h100, h200) if a != b}
  names = {"name", "device_description_str"}
  cudnn = {"major", "minor", "patch"}  # the cuDNN version the two specs were recorded with
  assert differing == {"memory_bandwidth", "device_memory_size"} | names | cudnn
  assert len(h100) == len(h200)
  assert '  name: "NVIDIA H200 141GB HBM3e"' in h200
  for gpu in ("h100", "h200"):
    spec = gpu_targets.GPUS[gpu]
    # The spec's bfloat16 matrix units give the data sheet's dense peak (989 TFLOP/s).
    assert gpu_targets.matrix_peak_flops(gpu) == pytest.approx(spec.peak_bf16_flops, rel=2e-3)
    assert spec.memory_bandwidth == pytest.approx(spec.hbm_bytes_per_second, rel=1e-3)
  with pytest.raises(ValueError, match="Unknown GPU"):
    gpu_targets.target_config("a100")


def test_config_overrides_take_the_fields_type():
  from configs import default  # pylint: disable=g-import-not-at-top

  config = default.get_config()
  accelerator_cost.apply_overrides(config, ["train.batch_size=64", "model.conv_impl=xla"])
  assert config.train.batch_size == 64 and config.model.conv_impl == "xla"
  accelerator_cost.apply_overrides(config, ["train.compilation_cache=false"])
  assert config.train.compilation_cache is False
  accelerator_cost.apply_overrides(config, ["train.shard_optimizer=false"])  # a str field
  assert config.train.shard_optimizer == "false"


def test_the_groups_table_shows_each_targets_groups_and_total():
  results = [
    {"target": "h100:1", "per_device_batch": 200, "hbm_bytes": 3 * 2**30,
     "hbm_groups": {"optimizer update": 2 * 2**30, "casts": 2**30}},
    {"target": "v5e:2x4", "per_device_batch": 25, "hbm_bytes": 2**30,
     "hbm_groups": {"casts": 2**30}},
  ]  # fmt: skip
  lines = accelerator_cost.groups_table(results)
  assert lines[0] == "| where the HBM bytes go | h100:1 @ 200 | v5e:2x4 @ 25 |"
  assert "| optimizer update | 2.000 (67%) | 0.000 (0%) |" in lines
  assert "| casts | 1.000 (33%) | 1.000 (100%) |" in lines
  assert lines[-1] == "| **total** | **3.00** | **1.00** |"


_ONE_KERNEL = """
HloModule negate

ENTRY %main (x: f32[1024,1024]) -> f32[1024,1024] {
  %x = f32[1024,1024]{1,0} parameter(0)
  ROOT %y = f32[1024,1024]{1,0} negate(%x), metadata={op_name="jit(s)/cond/branch_1_fun/neg"}
}
"""


def test_a_saved_program_is_counted_again_into_the_figures():
  compiled = {
    "unoptimized_flops_per_device": 0.9e9,
    "compiled_flops": 1e9,  # the larger of the two counts is taken
    "xla_bytes_accessed": 5e7,
    "devices": 8,
    "peak_flops": 1e12,  # 1 ms of compute
    "hbm_bytes_per_second": 1e9,  # 8.4 ms for the kernel's 8 MiB
    "link_bytes_per_second": 1e9,
  }
  r = step_cost.traffic_figures(compiled, _ONE_KERNEL)
  assert r["hbm_bytes"] == 2 * 2**22 and r["hbm_groups"] == {"optimizer update": 2 * 2**22}
  assert r["roofline_step_seconds"] == r["hbm_seconds"] == pytest.approx(2 * 2**22 / 1e9)
  assert r["compute_seconds"] == pytest.approx(1e-3) and r["bound_by"] == "HBM bandwidth"
  assert (r["flops"], r["flops_from"]) == (1e9, "compiled program")
  assert r["xla_bytes_roofline_step_seconds"] == pytest.approx(5e-2)
  assert r["collective_bytes"] == 0 and r["collective_seconds"] == 0
  assert "hbm_bytes" not in compiled  # a new dict


def test_recount_updates_the_figures_from_the_saved_programs(tmp_path, capsys):
  row = {
    "target": "h100:1",
    "devices": 1,
    "per_device_batch": 200,
    "global_batch": 200,
    "flops": 989e9,  # 1 ms on an H100; a row written before both counts were kept
    "flops_from": "unoptimized program / devices",
    "unoptimized_flops_per_device": 989e9,
    "xla_bytes_accessed": None,
    "bytes_needed": 2**30,
    "device_memory_bytes": 84942979072,
    "fits": True,
    "compile_seconds": 1.0,
    "hbm_bytes": 1,  # what an older count said
  }
  (tmp_path / "h100_1_200.hlo.txt").write_text(_ONE_KERNEL)
  figures = tmp_path / "figures.json"
  figures.write_text(json.dumps([row]))
  args = ["--recount", "--json", str(figures), "--save_hlo", str(tmp_path)]
  assert accelerator_cost.main(args) == 0
  (r,) = json.loads(figures.read_text())
  assert r["hbm_bytes"] == 2 * 2**22 and r["peak_flops"] == 989e12
  assert r["compute_seconds"] == pytest.approx(1e-3) and r["bound_by"] == "compute"
  assert r["compiled_flops"] is None
  assert "| h100:1 | 1 | 200 (200) |" in capsys.readouterr().out


# The loop's train step of a small model compiled for another platform's devices, no such
# device here: argv = platform, target, per-device batch, modalities.
_COST = """
import json, sys
sys.path.insert(0, "tests")
from conftest import small_config
platform, target, batch, modalities = sys.argv[1:]
config = small_config(tuple(modalities.split(",")))
if platform == "tpu":
  from benchmarks.costing import tpu_cost
  r = tpu_cost.cost_step(config, 64, target, int(batch))
else:
  from benchmarks.costing import gpu_cost
  kind, count = target.split(":")
  r = gpu_cost.cost_step(config, 64, kind, int(count), int(batch))
print("RESULT", json.dumps(r))
"""


def _cost_elsewhere(*args: str) -> dict:
  python_path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
  env = subprocess_env(
    PYTHONPATH=python_path,
    TPU_SKIP_MDS_QUERY="1",  # no TPU: do not ask a metadata server
    ALLOW_MULTIPLE_LIBTPU_LOAD="1",  # compiling only: another process may hold libtpu's lock
    JAX_PLATFORMS="cpu",
  )
  out = subprocess.run(
    [sys.executable, "-c", _COST, *args],
    env=env,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=840,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
  return json.loads(line[len("RESULT ") :])


def _check_figures(r: dict, devices: int, batch: int) -> None:
  assert r["devices"] == devices and r["global_batch"] == devices * batch and r["fits"]
  assert 0 < r["bytes_needed"] < r["device_memory_bytes"] and r["flops"] > 0
  assert sum(r["hbm_groups"].values()) == r["hbm_bytes"] > 0
  assert r["hbm_groups"]["optimizer update"] > 0
  assert r["hbm_groups"]["text encoder, forward"] > 0
  assert r["hbm_groups"]["text decoder, backward"] > 0
  assert r["roofline_step_seconds"] == max(r["compute_seconds"], r["hbm_seconds"])
  assert r["bound_by"] in ("compute", "HBM bandwidth")


@pytest.mark.slow  # XLA:TPU compiles a small step (about a minute on 2 cores)
@pytest.mark.timeout(900)
@pytest.mark.skipif(
  importlib.util.find_spec("libtpu") is None,
  reason="libtpu is not installed (pip install -e '.[tpu]')",
)
def test_a_small_step_compiles_for_a_v5e_slice_without_a_tpu():
  r = _cost_elsewhere("tpu", "v5e:2x2", "4", "frontal,text")
  _check_figures(r, 4, 4)
  assert r["compiled_flops"] > 0
  assert r["flops"] == max(r["compiled_flops"], r["unoptimized_flops_per_device"])
  # XLA's own count adds VMEM buffers and both ends of every HBM<->VMEM copy: several times more.
  assert r["hbm_bytes"] < r["xla_bytes_accessed"]
  assert r["hbm_groups"]["frontal encoder, backward"] > 0
  assert r["collective_bytes"] > 0 and r["collective_seconds"] > 0


@pytest.mark.slow  # XLA:GPU compiles a small step for two GPUs (about a minute on 2 cores)
@pytest.mark.timeout(900)
@pytest.mark.skipif(gpu_plugin_missing() is not None, reason=str(gpu_plugin_missing()))
def test_a_small_step_compiles_for_two_h100s_without_a_gpu():
  r = _cost_elsewhere("cuda", "h100:2", "4", "text")
  _check_figures(r, 2, 4)
  assert r["target"] == "h100:2" and r["device_memory_bytes"] == 84942979072
  assert r["flops_from"] == "unoptimized program / devices" and r["xla_bytes_accessed"] is None
  assert r["hbm_groups"]["collectives, backward (gradients)"] > 0 and r["collective_bytes"] > 0
