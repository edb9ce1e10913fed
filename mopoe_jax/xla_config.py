"""XLA settings that the entry points apply before JAX starts its backends.

On XLA:CPU (jaxlib 0.10) convolutions rewritten into individual YNNPACK calls made this
model's paper-size training step slower than XLA's own convolution emitter: 2.23 vs 1.83 s per
step of 8 on 2 cores, measured interleaved (benchmarks/results/step_optimization.md, issue #6). ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` turns that one
rewrite off; it is a CPU-only option that GPU and TPU backends ignore.
"""

from __future__ import annotations

import os

CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)


def apply_defaults(environ=os.environ) -> str:
  """Appends CPU_FLAGS to XLA_FLAGS unless the user already set the same option.

  Call before the first JAX computation (backends read XLA_FLAGS when they start). Returns the
  resulting XLA_FLAGS. Set MOPOE_XLA_DEFAULTS=0 to leave XLA_FLAGS alone.
  """
  flags = environ.get("XLA_FLAGS", "")
  if environ.get("MOPOE_XLA_DEFAULTS", "1") != "0":
    for flag in CPU_FLAGS:
      name = flag.split("=", 1)[0]
      if name not in flags:
        flags = f"{flags} {flag}".strip()
    environ["XLA_FLAGS"] = flags
  return flags
