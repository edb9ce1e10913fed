"""The programs a GPU or TPU would get, lowered on this CPU (benchmarks.costing.lowering)."""

from conftest import small_config
import pytest

from benchmarks.costing import lowering

pytestmark = pytest.mark.slow  # lowers the small model's programs four times (about 30 s)


@pytest.fixture(scope="module")
def described():
  """What the small config's programs hold (16 px, every kind of layer), lowered for cuda, tpu and
  this host (batch 8)."""
  config = small_config()
  config.model.conv_impl = "auto"  # as configs/default.py: decided per platform
  out = {
    p: {
      name: lowering.describe(e) for name, e in lowering.export_programs(config, 64, p, 8).items()
    }
    for p in ("cuda", "tpu", "cpu")
  }
  config.model.float32_text_logits = False
  out["cuda, bf16 logits"] = lowering.describe(
    lowering.export_programs(config, 64, "cuda", 8)["train_step"]
  )
  return out


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_accelerator_programs_hold_native_bfloat16_convolutions_and_no_custom_calls(
  described, platform
):
  programs = described[platform]
  assert set(programs) == set(lowering.PROGRAMS)
  for name, d in programs.items():
    assert d["platforms"] == (platform,), name
    assert d["custom_calls"] == [], (name, d["custom_calls"])  # no backend's own kernels
  train, evaluation = programs["train_step"], programs["eval_step"]
  # Every convolution native and in bfloat16 but the text logits' layer, kept in float32
  # (model.float32_text_logits): its forward, input-gradient and weight-gradient convolutions.
  assert train["convolutions"] > 50
  assert train["bf16_convolutions"] == train["convolutions"] - 3
  assert evaluation["bf16_convolutions"] == evaluation["convolutions"] - 1 > 0
  assert described["cuda, bf16 logits"]["bf16_convolutions"] == train["convolutions"]


def test_the_choices_follow_the_target_platform_not_the_host(described):
  cuda, tpu, host = (described[p]["train_step"] for p in ("cuda", "tpu", "cpu"))
  assert {k: v for k, v in cuda.items() if k != "platforms"} == {
    k: v for k, v in tpu.items() if k != "platforms"
  }
  # On this CPU host, 'auto' picks float32 and the CPU rewrites (patches and matrix products),
  # which the accelerator programs do not have.
  assert host["bf16_convolutions"] == 0
  assert host["convolutions"] < cuda["convolutions"]
  assert host["dot_generals"] > 2 * cuda["dot_generals"]
