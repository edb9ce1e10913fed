"""HBM bytes of a compiled program from its optimized HLO (benchmarks.costing.hlo_traffic)."""

import importlib.util
import json
import os
import subprocess
import sys

from conftest import REPO, gpu_plugin_missing, subprocess_env
import jax
import jax.numpy as jnp
import pytest

from benchmarks.costing import hlo_traffic

# A hand-written TPU-style module: every figure below is counted by hand.
#   %p0   f32[256,256]            in HBM            262,144 B
#   %p1   f32[1000,100] T(8,128)  in HBM, padded    1000 x 128 x 4 = 512,000 B
#   %vmem f32[256,256] S(1)       in VMEM (not counted)
_MODULE = """
HloModule jit_step, is_scheduled=true, num_partitions=4

%fused_scale (param_0: f32[256,256]) -> f32[256,256] {
  %param_0 = f32[256,256]{1,0} parameter(0)
  %constant = f32[] constant(2)
  %broadcast = f32[256,256]{1,0} broadcast(%constant), dimensions={}
  ROOT %multiply = f32[256,256]{1,0} multiply(%param_0, %broadcast)
}

%fused_cast (param_0.1: f32[256,256]) -> bf16[256,256] {
  %param_0.1 = f32[256,256]{1,0} parameter(0)
  ROOT %convert = bf16[256,256]{1,0} convert(%param_0.1)
}

%body (loop: (s32[], f32[1000,100])) -> (s32[], f32[1000,100]) {
  %loop = (s32[]{:S(2)}, f32[1000,100]{1,0:T(8,128)}) parameter(0)
  %i = s32[]{:S(2)} get-tuple-element(%loop), index=0
  %x = f32[1000,100]{1,0:T(8,128)} get-tuple-element(%loop), index=1
  %y = f32[1000,100]{1,0:T(8,128)} fusion(%x), kind=kLoop, calls=%fused_scale2, metadata={op_name="jit(step)/jvp(MoPoE)/MoPoE.decode/decoders_text/Conv_0/mul"}
  ROOT %t = (s32[]{:S(2)}, f32[1000,100]{1,0:T(8,128)}) tuple(%i, %y)
}

%fused_scale2 (param_0.2: f32[1000,100]) -> f32[1000,100] {
  %param_0.2 = f32[1000,100]{1,0} parameter(0)
  ROOT %negate = f32[1000,100]{1,0} negate(%param_0.2)
}

%condition (loop.1: (s32[], f32[1000,100])) -> pred[] {
  %loop.1 = (s32[]{:S(2)}, f32[1000,100]{1,0:T(8,128)}) parameter(0)
  %i.1 = s32[]{:S(2)} get-tuple-element(%loop.1), index=0
  %three = s32[]{:S(2)} constant(3)
  ROOT %lt = pred[]{:S(2)} compare(%i.1, %three), direction=LT
}

%update (branch: (f32[256,256])) -> (f32[256,256]) {
  %branch = (f32[256,256]{1,0}) parameter(0)
  %w = f32[256,256]{1,0} get-tuple-element(%branch), index=0
  %w2 = f32[256,256]{1,0} fusion(%w), kind=kLoop, calls=%fused_scale, metadata={op_name="jit(step)/cond/branch_1_fun/mul"}
  ROOT %out = (f32[256,256]{1,0}) tuple(%w2)
}

%skip (branch.1: (f32[256,256])) -> (f32[256,256]) {
  ROOT %branch.1 = (f32[256,256]{1,0}) parameter(0)
}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(%a, %b)
}

ENTRY %main (p0: f32[256,256], p1: f32[1000,100], flag: pred[]) -> f32[256,256] {
  %p0 = f32[256,256]{1,0} parameter(0), metadata={op_name="state.params"}
  %p1 = f32[1000,100]{1,0:T(8,128)} parameter(1)
  %flag = pred[]{:S(2)} parameter(2)
  %cast = bf16[256,256]{1,0} fusion(%p0), kind=kLoop, calls=%fused_cast, metadata={op_name="jit(step)/jvp(MoPoE)/MoPoE.posteriors/MoPoE.encode/encoders_frontal/Conv_0/convert_element_type"}
  %prefetch = (f32[256,256]{1,0:S(1)}, f32[256,256]{1,0}, u32[]{:S(2)}) copy-start(%p0)
  %vmem = f32[256,256]{1,0:S(1)} copy-done(%prefetch)
  %scaled = f32[256,256]{1,0} fusion(%vmem), kind=kLoop, calls=%fused_scale, metadata={op_name="jit(step)/transpose(jvp(MoPoE))/MoPoE.posteriors/MoPoE.encode/encoders_frontal/Conv_0/mul"}
  %summed = f32[256,256]{1,0} all-reduce(%scaled), replica_groups={}, to_apply=%add, metadata={op_name="jit(step)/transpose(jvp(MoPoE))/MoPoE.posteriors/MoPoE.encode/encoders_frontal/Conv_0/mul"}
  %init = (s32[]{:S(2)}, f32[1000,100]{1,0:T(8,128)}) tuple(%flag, %p1)
  %loop = (s32[]{:S(2)}, f32[1000,100]{1,0:T(8,128)}) while(%init), condition=%condition, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %guard = (f32[256,256]{1,0}) tuple(%summed)
  %cond = (f32[256,256]{1,0}) conditional(%flag, %guard, %guard), branch_computations={%skip, %update}
  ROOT %result = f32[256,256]{1,0} get-tuple-element(%cond), index=0
}
"""  # noqa: E501

_F32_256 = 256 * 256 * 4
_BF16_256 = 256 * 256 * 2
_PADDED = 1000 * 128 * 4


def test_the_hand_written_module_counts_exactly_what_is_in_hbm():
  traffic = hlo_traffic.hbm_traffic(_MODULE)
  by_name = {k.name: k for k in traffic.kernels}
  # The cast reads the f32 parameter and writes its bf16 copy, both in HBM.
  assert (by_name["cast"].bytes_read, by_name["cast"].bytes_written) == (_F32_256, _BF16_256)
  # The prefetch into VMEM: its HBM end only, once; the -done half moves nothing.
  assert (by_name["prefetch"].bytes_read, by_name["prefetch"].bytes_written) == (_F32_256, 0)
  assert "vmem" not in by_name
  # The kernel reading the VMEM copy writes to HBM only.
  assert (by_name["scaled"].bytes_read, by_name["scaled"].bytes_written) == (0, _F32_256)
  assert by_name["summed"].bytes == 2 * _F32_256
  assert by_name["summed"].collective_bytes == _F32_256
  # The loop body runs 3 times (known trip count), over the tile-padded array; the condition's
  # scalars are in scalar memory (S(2)).
  assert by_name["y"].bytes == 3 * 2 * _PADDED
  assert by_name["lt"].bytes == 0
  # The conditional counts its heavier branch (the update), read and written once.
  assert by_name["w2"].bytes == 2 * _F32_256 and by_name["w2"].in_branch
  expected = (
    (_F32_256 + _BF16_256) + _F32_256 + _F32_256 + 2 * _F32_256 + 3 * 2 * _PADDED + 2 * _F32_256
  )
  assert traffic.bytes == expected
  assert traffic.loops_without_trip_count == 0
  assert traffic.collective_bytes == _F32_256
  # A ring all-reduce over the module's 4 devices sends 2 (4 - 1) / 4 of its result.
  assert traffic.link_bytes == pytest.approx(1.5 * _F32_256)


@pytest.mark.parametrize(
  "opcode, shape, groups, expected",
  [
    ("all-reduce", "f32[1024]{0}", "replica_groups=[2,4]<=[8]", 2 * 3 / 4 * 4096),
    ("all-gather", "f32[1024]{0}", "replica_groups={{0,1},{2,3}}", 1 / 2 * 4096),
    ("reduce-scatter", "f32[128]{0}", "replica_groups=mesh['a'=8,'b'=1] {'a'}", 7 * 512),
    ("collective-permute-start", "(f32[64]{0}, f32[64]{0}, u32[], u32[])",
     "source_target_pairs={{0,1},{1,0}}", 256),
    ("all-reduce", "f32[1024]{0}", "replica_groups={}", 2 * 7 / 8 * 4096),  # all 8 devices
  ],
)  # fmt: skip
def test_what_a_device_sends_for_a_collective(opcode, shape, groups, expected):
  ins = hlo_traffic.Instruction("c", shape, opcode, ("x",), f", {groups}, to_apply=%add", "")
  assert hlo_traffic._link_bytes(ins, 8) == pytest.approx(expected)


def test_the_groups_add_up_to_the_total_and_follow_the_module_paths():
  traffic = hlo_traffic.hbm_traffic(_MODULE)
  groups = hlo_traffic.attribute(traffic)
  assert sum(groups.values()) == traffic.bytes
  assert groups["casts"] == _F32_256 + _BF16_256
  # The prefetch into VMEM counts for the kernel it brings the bytes to.
  assert "layout copies" not in groups
  assert groups["frontal encoder, backward"] == 2 * _F32_256
  assert groups["collectives, backward (gradients)"] == 2 * _F32_256
  assert groups["text decoder, forward"] == 3 * 2 * _PADDED
  assert groups["optimizer update"] == 2 * _F32_256


def test_a_loop_without_a_trip_count_counts_once_and_is_reported():
  module = _MODULE.replace(', backend_config={"known_trip_count":{"n":"3"}}', "")
  traffic = hlo_traffic.hbm_traffic(module)
  assert traffic.loops_without_trip_count == 1
  assert {k.name: k for k in traffic.kernels}["y"].bytes == 2 * _PADDED


_PARTIAL = """
HloModule partial

%fused_slice (p: bf16[4096]) -> bf16[1024] {
  %p = bf16[4096]{0} parameter(0)
  ROOT %s = bf16[1024]{0} slice(%p), slice={[1024:2048]}
}

%fused_dus (b: f32[1024,128], u: f32[8,128], i: s32[]) -> f32[1024,128] {
  %b = f32[1024,128]{1,0} parameter(0)
  %u = f32[8,128]{1,0} parameter(1)
  %i = s32[] parameter(2)
  %zero = s32[] constant(0)
  ROOT %d = f32[1024,128]{1,0} dynamic-update-slice(%b, %u, %i, %zero)
}

ENTRY %main (flat: bf16[4096], buf: f32[1024,128], upd: f32[8,128], idx: s32[]) -> f32[1024,128] {
  %flat = bf16[4096]{0} parameter(0)
  %buf = f32[1024,128]{1,0} parameter(1)
  %upd = f32[8,128]{1,0} parameter(2)
  %idx = s32[] parameter(3)
  %piece = bf16[1024]{0} fusion(%flat), kind=kLoop, calls=%fused_slice
  ROOT %out = f32[1024,128]{1,0} fusion(%buf, %upd, %idx), kind=kLoop, calls=%fused_dus
}
"""  # noqa: E501


def test_a_slice_reads_its_slice_and_an_in_place_update_writes_its_update():
  kernels = {k.name: k for k in hlo_traffic.hbm_traffic(_PARTIAL).kernels}
  # XLA:GPU splits an all-reduce's combined buffer with one slicing kernel per piece: each reads
  # its piece, not the whole buffer.
  assert (kernels["piece"].bytes_read, kernels["piece"].bytes_written) == (2048, 2048)
  # The buffer updated in place is neither read nor written whole: the update and the index in,
  # the update out.
  assert (kernels["out"].bytes_read, kernels["out"].bytes_written) == (8 * 128 * 4 + 4, 8 * 128 * 4)


# XLA:TPU's forms: an asynchronous slice into VMEM, buffers allocated and seen as one (no
# traffic), and a loop whose trip count only its condition says (i < 4, i from a copy of 0).
_TPU_FORMS = """
HloModule forms

%body (p: (u32[], f32[64,128])) -> (u32[], f32[64,128]) {
  %p = (u32[]{:T(128)}, f32[64,128]{1,0:T(8,128)}) parameter(0)
  %i = u32[]{:T(128)} get-tuple-element(%p), index=0
  %x = f32[64,128]{1,0:T(8,128)} get-tuple-element(%p), index=1
  %y = f32[64,128]{1,0:T(8,128)} negate(%x)
  ROOT %t = (u32[]{:T(128)}, f32[64,128]{1,0:T(8,128)}) tuple(%i, %y)
}

%condition (p.1: (u32[], f32[64,128])) -> pred[] {
  %p.1 = (u32[]{:T(128)}, f32[64,128]{1,0:T(8,128)}) parameter(0)
  %i.1 = u32[]{:T(128)} get-tuple-element(%p.1), index=0
  %four = u32[]{:T(128)} constant(4)
  ROOT %lt = pred[]{:T(512)} compare(%i.1, %four), direction=LT
}

ENTRY %main (big: bf16[64,1024], x: f32[64,128]) -> f32[64,128] {
  %big = bf16[64,1024]{1,0:T(8,128)(2,1)} parameter(0)
  %x = f32[64,128]{1,0:T(8,128)} parameter(1)
  %start = ((bf16[64,1024]{1,0:T(8,128)(2,1)}), bf16[64,256]{1,0:T(8,128)(2,1)S(1)}, s32[]{:S(2)}) slice-start(%big), slice={[0:64], [0:256]}
  %piece = bf16[64,256]{1,0:T(8,128)(2,1)S(1)} slice-done(%start)
  %buffer = bf16[64,1024]{1,0:T(8,128)(2,1)} custom-call(), custom_call_target="AllocateBuffer"
  %joined = bf16[64,1024]{1,0:T(8,128)(2,1)} custom-call(%buffer, %piece), custom_call_target="ConcatBitcast"
  %zero = u32[]{:T(128)} constant(0)
  %zero.1 = u32[]{:T(128)} copy(%zero)
  %init = (u32[]{:T(128)}, f32[64,128]{1,0:T(8,128)}) tuple(%zero.1, %x)
  %loop = (u32[]{:T(128)}, f32[64,128]{1,0:T(8,128)}) while(%init), condition=%condition, body=%body
  ROOT %out = f32[64,128]{1,0:T(8,128)} get-tuple-element(%loop), index=1
}
"""  # noqa: E501


def test_tpu_forms_an_async_slice_buffers_that_move_nothing_and_a_loop_counted_from_its_condition():
  traffic = hlo_traffic.hbm_traffic(_TPU_FORMS)
  kernels = {k.name: k for k in traffic.kernels}
  assert (kernels["start"].bytes_read, kernels["start"].bytes_written) == (64 * 256 * 2, 0)
  assert "buffer" not in kernels and "joined" not in kernels and "piece" not in kernels
  assert traffic.loops_without_trip_count == 0
  assert kernels["y"].bytes == 4 * 2 * 64 * 128 * 4  # 4 trips: the condition's i < 4 from 0
  assert kernels["zero.1"].bytes == 2 * 4  # the copy of the constant, in HBM
  assert kernels["lt"].bytes == 4 * (4 + 4 + 1)  # i and 4 read, the pred written, 4 times
  assert traffic.bytes == 64 * 256 * 2 + 4 * 2 * 64 * 128 * 4 + 2 * 4 + 4 * (4 + 4 + 1)


@pytest.mark.parametrize(
  "shape, space, expected",
  [
    ("f32[256,256]{1,0}", 0, _F32_256),
    ("f32[1000,100]{1,0:T(8,128)}", 0, 1000 * 128 * 4),
    ("f32[1000,100]{0,1:T(8,128)}", 0, 104 * 1024 * 4),  # dimension 0 minor: 100 -> 104
    ("bf16[3,5]{1,0:T(8,128)(2,1)}", 0, 8 * 128 * 2),
    ("pred[8,3]{0,1:T(4,128)(4,1)}", 0, 4 * 128),
    ("f32[16]{0:T(128)S(1)}", 0, 0),
    ("f32[16]{0:T(128)S(1)}", 1, 128 * 4),
    ("f32[16]{0:T(128)S(1)}", None, 128 * 4),
    ("s4[10]{0}", 0, 5),
    ("f32[]", 0, 4),
    ("(f32[2]{0}, (bf16[4]{0}, s8[3]{0:S(1)}))", 0, 8 + 8),
  ],
)
def test_shape_bytes_pads_tiles_and_keeps_to_the_memory_space(shape, space, expected):
  assert hlo_traffic.shape_bytes(shape, space) == expected


def test_an_elementwise_program_compiled_here_moves_its_buffer_in_and_out():
  x = jax.ShapeDtypeStruct((512, 1024), jnp.float32)
  compiled = jax.jit(lambda x: -x).lower(x).compile()
  traffic = hlo_traffic.hbm_traffic(compiled.as_text())
  assert traffic.bytes == 2 * 512 * 1024 * 4  # one kernel: read 2 MiB, write 2 MiB
  assert [k.bytes for k in traffic.kernels if k.bytes] == [traffic.bytes]
  assert sum(hlo_traffic.attribute(traffic).values()) == traffic.bytes


@pytest.mark.parametrize(
  "op_name, expected",
  [
    (
      "jit(s)/jvp(MoPoE)/MoPoE.decode/decoders_lateral/ResidualBlock_0/Conv_1/conv",
      "lateral decoder, forward",
    ),
    (
      "jit(s)/transpose(jvp(MoPoE))/MoPoE.posteriors/MoPoE.encode/encoders_text/Embed_0/x",
      "text encoder, backward",
    ),
    (
      "jit(s)/transpose(jvp(MoPoE))/MoPoE.posteriors/mul",
      "rest of the model (fusion, sampling), backward",
    ),
    ("jit(s)/jvp()/log", "loss terms, forward"),
    ("jit(s)/cond/branch_1_fun/sqrt", "optimizer update"),
    ("jit(s)/cond", "optimizer update"),  # XLA:GPU's select form of the guard
    (
      "jit(s)/jit(_threefry_fold_in)/train_step/while/cond/lt",
      "other (gradient norm, random numbers, bookkeeping)",
    ),
  ],
)
def test_kernels_are_grouped_by_their_module_path(op_name, expected):
  kernel = hlo_traffic.Kernel("main", "k", "fusion", op_name, 1, 1, False, "")
  assert hlo_traffic.classify(kernel) == expected


# An elementwise program compiled for a compile-only device of another platform: f32[1000,1000]
# is read and written whole; on a TPU its T(8,128) tiles pad one dimension to 1024 either way.
_ELEMENTWISE = """
import json, sys
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from benchmarks.costing import hlo_traffic
from mopoe_jax.platform import sharding
if sys.argv[1] == "tpu":
  from benchmarks.costing import tpu_cost
  devices = tpu_cost.topology("v5e:2x2").devices
else:
  from benchmarks.costing import gpu_cost
  devices = gpu_cost.topology("h100", 1).devices
mesh = sharding.make_data_mesh(devices)
x = jax.ShapeDtypeStruct((1000, 1000), jnp.float32, sharding=NamedSharding(mesh, P()))
compiled = jax.jit(lambda x: -x).lower(x).compile()
traffic = hlo_traffic.hbm_traffic(compiled.as_text())
memory = compiled.memory_analysis()
print("RESULT", json.dumps({"bytes": traffic.bytes, "argument": memory.argument_size_in_bytes,
      "kind": devices[0].device_kind}))
"""


def _compile_elsewhere(platform: str) -> dict:
  python_path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
  env = subprocess_env(
    PYTHONPATH=python_path,
    TPU_SKIP_MDS_QUERY="1",  # no TPU: do not ask a metadata server
    ALLOW_MULTIPLE_LIBTPU_LOAD="1",  # compiling only: another process may hold libtpu's lock
    JAX_PLATFORMS="cpu",
  )
  out = subprocess.run(
    [sys.executable, "-c", _ELEMENTWISE, platform],
    env=env,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=240,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
  return json.loads(line[len("RESULT ") :])


@pytest.mark.slow  # XLA:TPU compiles in a subprocess
@pytest.mark.timeout(300)
@pytest.mark.skipif(
  importlib.util.find_spec("libtpu") is None,
  reason="libtpu is not installed (pip install -e '.[tpu]')",
)
def test_a_tpu_program_counts_its_tile_padding():
  r = _compile_elsewhere("tpu")
  assert r["bytes"] == 2 * 1000 * 1024 * 4
  assert r["kind"] == "TPU v5 lite"


@pytest.mark.slow  # XLA:GPU compiles in a subprocess
@pytest.mark.timeout(300)
@pytest.mark.skipif(gpu_plugin_missing() is not None, reason=str(gpu_plugin_missing()))
def test_a_gpu_program_compiles_without_a_gpu_and_moves_its_buffer_in_and_out():
  r = _compile_elsewhere("cuda")
  assert r["bytes"] == 2 * 1000 * 1000 * 4 and r["argument"] == 1000 * 1000 * 4
  assert r["kind"] == "NVIDIA H100 80GB HBM3"
