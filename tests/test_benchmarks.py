"""The step benchmark end to end at the tiny size: parent, JAX worker and PyTorch worker.

Each test runs ``python benchmarks/step_throughput.py`` in a subprocess with a hard timeout and
reads the JSON it writes. PyTorch is not a test dependency: the tests that need it skip without
it. The workers compile with jax_disable_most_optimizations (as conftest.py does in-process) and
share the tests' persistent compilation cache; timings are not checked, only that they exist.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # the benchmark's processes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "step_throughput.py")
TIMEOUT_S = 480  # a few tens of seconds on a quiet 2-core machine; minutes when it is busy
TINY = (
  "--sizes",
  "tiny",
  "--batch",
  "8",
  "--steps",
  "2",
  "--rounds",
  "1",
  "--device",
  "cpu",
  "--timeout",
  "400",
)


# A sitecustomize that makes these packages unimportable, as they are on the GPU machine the
# benchmark is meant for (no TensorFlow, tensorflow-datasets or clu there).
BLOCKER = """
import importlib.abc
import sys


class _Absent(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("tensorflow", "tensorflow_datasets", "clu"):
      raise ImportError(f"{name} is not installed (blocked by the test)")
    return None


sys.meta_path.insert(0, _Absent())
"""


def _run(tmp_path, *flags, returncode=0, block_tensorflow=False):
  out = tmp_path / "step_throughput"
  env = dict(os.environ)
  if block_tensorflow:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env["PYTHONPATH"] = os.pathsep.join([str(site)] + [p for p in [env.get("PYTHONPATH")] if p])
  env.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
  env.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["MOPOE_TEST_XLA_CACHE"])  # conftest.py
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  proc = subprocess.run(
    [sys.executable, SCRIPT, *TINY, "--out", str(out), *flags],
    capture_output=True,
    text=True,
    timeout=TIMEOUT_S,
    cwd=REPO,
    env=env,
  )
  assert proc.returncode == returncode, (
    f"exit {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
  )
  with open(f"{out}.json") as f:
    report = json.load(f)
  assert os.path.getsize(f"{out}.md") > 0
  return report, proc.stdout


def _check_machine(report):
  machine = report["machine"]
  assert machine["cpu"]["model"]
  assert isinstance(machine["cpu"]["extensions"], list)
  assert isinstance(machine["cpu"]["native_bf16"], bool)
  assert machine["load_start"] >= 0 and machine["load_end"] >= 0
  assert machine["versions"]["jax"]
  assert machine["device"] == "cpu" and machine["backend"] == "cpu"


@pytest.fixture(scope="module")
def variants_and_a_crashed_worker(tmp_path_factory):
  """One run of the parent: the JAX worker with two variants, built in parallel, without
  TensorFlow and clu (as on the GPU machine), beside a PyTorch worker that dies by SIGSEGV at
  start-up, before importing torch (so no torch is needed). XLA's own convolutions
  (``--conv-impl xla``): both programs compile in about 20% less CPU time than with the
  phase-by-phase ones (83 against 99 CPU-s for this test, 2-core AMD EPYC, jax 0.12), which
  tests/test_layers.py checks against them."""
  return _run(
    tmp_path_factory.mktemp("variants"),
    "--no-peak",
    "--compute-dtype",
    "float32,bfloat16",
    "--conv-impl",
    "xla",
    "--parallel-build",
    "yes",
    "--simulate-crash",
    "torch:startup",
    returncode=1,
    block_tensorflow=True,
  )


def test_jax_worker_runs_several_variants_without_tensorflow(variants_and_a_crashed_worker):
  report, stdout = variants_and_a_crashed_worker
  _check_machine(report)
  [case] = report["cases"]
  assert (case["size"], case["batch"]) == ("tiny", 8)
  assert case["jax_examples_per_s"] > 0
  assert "torch_examples_per_s" not in case and "ratio" not in case
  variants = case["variants"]
  assert {v["compute_dtype"] for v in variants.values()} == {"float32", "bfloat16"}
  assert len(variants) == 2
  for v in variants.values():
    assert v["framework"] == "jax"
    assert v["step_wall_s"]["n"] == 2 and v["losses_finite"]
    assert v["foreign_modules"] == []  # neither torch nor tensorflow in the JAX worker
    assert v["xla_flops_per_step"] > 0
    assert {"init_s", "lower_s", "compile_s", "first_step_s"} <= set(v["phases"])
  assert "jax float32" in stdout


def test_both_frameworks_end_to_end(tmp_path):
  pytest.importorskip("torch")
  report, _ = _run(tmp_path, "--peak-budget", "0.2", "--torch-modes", "f32,amp")
  _check_machine(report)
  assert report["machine"]["versions"]["torch"]
  [case] = report["cases"]
  assert case["jax_examples_per_s"] > 0 and case["torch_examples_per_s"] > 0
  assert case["ratio"] > 0
  jax_v, torch_v = case["variants"]["jax float32"], case["variants"]["torch f32"]
  assert jax_v["params"] == torch_v["params"]  # the same model in both frameworks
  assert torch_v["model_flops_per_step"] > 0
  assert 0.5 < case["xla_flops_over_model_flops"] < 2.0
  assert torch_v["foreign_modules"] == [] and jax_v["foreign_modules"] == []
  assert torch_v["losses_finite"] and jax_v["losses_finite"]
  amp = case["variants"]["torch amp"]  # channels_last + autocast bf16, as on a GPU
  assert amp["settings"]["channels_last"] and amp["settings"]["autocast"] == "bfloat16"
  assert set(case["ratios"]["jax float32"]) == {"torch f32", "torch amp"}
  peak = report["matmul_peak"]
  assert peak["jax"]["f32"]["flop_per_s"] > 0 and peak["torch"]["f32"]["flop_per_s"] > 0
  if not report["machine"]["cpu"]["native_bf16"]:
    assert "skipped" in peak["torch"]["bf16"]
  assert report["failures"] == []


def test_worker_crash_at_startup_is_reported(variants_and_a_crashed_worker):
  """The PyTorch worker's crash is reported; the JAX worker's results are still written."""
  report, stdout = variants_and_a_crashed_worker
  [failure] = report["failures"]
  assert failure["framework"] == "torch" and failure["phase"] == "startup"
  assert failure["signal"] == "SIGSEGV" and failure["returncode"] == -11
  assert any("simulated crash" in line for line in failure["stderr_tail"])
  assert "torch f32 worker failed in startup: killed by SIGSEGV" in stdout
  [case] = report["cases"]
  assert case["jax_examples_per_s"] > 0


def test_worker_crash_while_timed_keeps_the_other_results(tmp_path):
  pytest.importorskip("torch")
  report, _ = _run(tmp_path, "--no-peak", "--simulate-crash", "torch:steps", returncode=1)
  [failure] = report["failures"]
  assert (failure["framework"], failure["phase"], failure["signal"]) == (
    "torch",
    "steps",
    "SIGSEGV",
  )
  [case] = report["cases"]
  assert case["jax_examples_per_s"] > 0 and "torch f32" not in case["variants"]


def test_gpu_summary_and_markdown(tmp_path):
  """The GPU-only branches of the parent (MFU, device memory, Markdown), on made-up numbers."""
  sys.path.insert(0, REPO)
  from benchmarks import step_throughput as st  # pylint: disable=g-import-not-at-top
  from benchmarks import step_throughput_report as sr  # pylint: disable=g-import-not-at-top

  args = st.parse_args(["--sizes", "tiny", "--device", "gpu", "--no-peak"])
  run = st.Run(args, "gpu", "--device")
  # Every JAX variant the issue asks for on a GPU: both dtypes with both convolution forms.
  assert {v.name for v in run.variants} == {
    "jax float32 conv xla",
    "jax float32 conv cpu",
    "jax bfloat16 conv xla",
    "jax bfloat16 conv cpu",
    "torch amp",
    "torch f32",
  }
  run.hellos = {
    "jax": {"device_kind": "NVIDIA H200", "backend": "gpu", "versions": {}},
    "torch": {"device_kind": "NVIDIA H200", "versions": {}},
  }
  timing = {
    "median": 0.05,
    "q25": 0.049,
    "q75": 0.051,
    "iqr": 0.002,
    "min": 0.048,
    "max": 0.052,
    "n": 6,
  }

  def variant(framework, name, **extra):
    return dict(
      framework=framework,
      variant=name,
      phases={"compile_s": 30.0},
      params=1,
      warmup_step_s=[0.1],
      step_wall_s=timing,
      step_cpu_s=timing,
      examples_per_s=4000.0,
      threads_busy=1.0,
      memory={"device_peak_bytes": 2**33},
      **extra,
    )

  case = {
    "size": "paper",
    "batch": 200,
    "steps": 6,
    "rounds": 3,
    "load_during": {"min": 0.1, "max": 0.2},
    "variants": {
      "jax bfloat16": variant(
        "jax", "jax bfloat16", compute_dtype="bfloat16", xla_flops_per_step=2.2e13
      ),
      "torch amp": variant("torch", "torch amp", mode="amp", model_flops_per_step=2.2e13),
    },
  }
  run._summarize(case, 200)  # pylint: disable=protected-access
  jax_v = case["variants"]["jax bfloat16"]
  assert jax_v["mfu"] == pytest.approx(2.2e13 / 0.05 / 989e12)
  assert jax_v["peak_memory"]["bytes"] == 2**33
  assert case["ratio"] == pytest.approx(1.0)
  sr.print_case(case, gpu=True)
  report = dict(
    run.report,
    cases=[case],
    total_s=60.0,
    settings={
      "command": "python benchmarks/step_throughput.py",
      "device": "gpu",
      "device_reason": "--device",
      "omp_wait_policy": "PASSIVE",
      "threads": 2,
    },
  )
  report["machine"] = {
    "cpu": {"model": "x", "extensions": [], "native_bf16": False, "logical_cpus": 16},
    "device_kind": "NVIDIA H200",
    "versions": {"jax": "0"},
    "cores": None,
    "load_start": 0.1,
    "load_end": 0.2,
  }
  st.write_markdown(str(tmp_path / "gpu.md"), report)
  text = (tmp_path / "gpu.md").read_text()
  assert "MFU 44.5%" in text and "(GPU)" in text
  assert st._common.gpu_peak_bf16("Some Other GPU") is None  # pylint: disable=protected-access


def test_compile_time_counts_what_an_optimized_program_holds():
  """benchmarks/compile_time.py's reading of XLA's optimized HLO text, on a small program with
  one while loop (its trip count is an argument, so XLA cannot unroll it), one dot and
  tuple-typed instructions."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  sys.path.insert(0, REPO)
  from benchmarks import compile_time  # pylint: disable=g-import-not-at-top

  assert (
    compile_time._opcode(  # pylint: disable=protected-access
      '  %add.1 = f32[2]{0} add(f32[2]{0} %a, f32[2]{0} %b), metadata={op_name="x"}'
    )
    == "add"
  )
  assert (
    compile_time._opcode(  # pylint: disable=protected-access
      "  %w = (s32[], f32[4,3]{1,0}) while((s32[], f32[4,3]{1,0}) %t), condition=%c"
    )
    == "while"
  )
  assert (
    compile_time._opcode(  # pylint: disable=protected-access
      "ENTRY %main.10 (Arg_0.1: f32[4,3]) -> f32[] {"
    )
    is None
  )

  def f(x, n):
    _, y = jax.lax.while_loop(lambda c: c[0] < n, lambda c: (c[0] + 1, jnp.sin(c[1])), (0, x))
    return jnp.dot(y.T, y)

  text = jax.jit(f).lower(jnp.ones((4, 3)), 5).compile().as_text()
  summary = compile_time.hlo_summary(text, top=5)
  assert summary["while_loops"] == 1 and summary["dots"] == 1, summary
  assert summary["instructions"] > summary["fusions"] + 3
  # The entry, the loop's condition and body, fusions: one header each (each ends with a "}").
  assert 3 <= summary["computations"] == sum(line == "}" for line in text.splitlines())
  # Instructions are attributed to the jax source that made them: the loop's sine among them.
  assert any(part.startswith("while/") for part, _ in summary["top_parts"]), summary
