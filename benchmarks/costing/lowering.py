"""The programs an accelerator would get, lowered on any machine (``jax.export``).

`export_programs` lowers the init, the train step and the eval step of a config for a target
platform ('cuda', 'rocm', 'tpu' or 'cpu') on whatever machine runs it, a CPU-only one included:
``jax.export`` lowers for a platform without its devices. The model is built for the target
(`model.create_model` with ``platform``), so ``model.conv_impl``/``model.compute_dtype`` 'auto'
follow the target, not the host: native convolutions and bfloat16 for an accelerator. Lowering
stops at StableHLO (the target's compiler is not here); `describe` says what the program holds:
convolutions (and the dtype of their operands), matrix products, loops and custom calls (a
custom call names a kernel of one backend; the accelerator programs must hold none).
``benchmarks/accelerator_programs.py`` prints it for the paper's sizes.
"""

from __future__ import annotations

import collections
import functools
import re

import jax
from jax import export as jax_export
import ml_collections

from mopoe_jax.data.datasource import MODEL_KEYS
from mopoe_jax.training import step as step_lib
from mopoe_jax.vae import model as model_lib

PROGRAMS = ("init", "train_step", "eval_step")


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def export_programs(
  config: ml_collections.ConfigDict, vocab_size: int, platform: str, batch_size: int
) -> dict:
  """``{name: jax.export.Exported}`` of `PROGRAMS` for ``platform``, one device, ``batch_size``
  studies per step."""
  model = model_lib.create_model(config, vocab_size, platform=platform)
  step_config = step_lib.StepConfig.from_config(config, model, pad_id=1)
  rng = jax.ShapeDtypeStruct((2,), jax.numpy.uint32)
  init = jax.jit(functools.partial(step_lib.init_state, model, config))
  state = jax.eval_shape(init, rng)
  batch = _abstract(
    {k: v for k, v in model_lib.dummy_batch(config, batch_size).items() if k in MODEL_KEYS}
  )
  eval_batch = dict(batch, valid=jax.ShapeDtypeStruct((batch_size,), jax.numpy.bool_))
  lower = functools.partial(jax_export.export, platforms=(platform,))
  return {
    "init": lower(init)(rng),
    "train_step": lower(
      jax.jit(functools.partial(step_lib.train_step, model=model, step_config=step_config))
    )(state, batch, rng),
    "eval_step": lower(
      jax.jit(functools.partial(step_lib.eval_step, model=model, step_config=step_config))
    )(state, eval_batch),
  }


def describe(exported) -> dict:
  """What a lowered program holds: counts of StableHLO ops of interest and the custom calls."""
  text = exported.mlir_module()
  ops = collections.Counter(re.findall(r"stablehlo\.([a-z_]+)", text))
  conv_lines = [line for line in text.splitlines() if "stablehlo.convolution" in line]
  return {
    "platforms": tuple(exported.platforms),
    "convolutions": ops["convolution"],
    # operands' types: "... : (tensor<...xbf16>, tensor<...xbf16>) -> tensor<...>"
    "bf16_convolutions": sum(
      "bf16" in line.rsplit(" : (", 1)[-1].split(") ->")[0] for line in conv_lines
    ),
    "dot_generals": ops["dot_general"],
    "while_loops": ops["while"],
    "custom_calls": sorted(
      set(re.findall(r"custom_call @([\w.]+)", text))
      | set(re.findall(r'call_target_name = "([^"]+)"', text))
    ),
    "bytes": len(text),
  }
