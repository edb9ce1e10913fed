"""What a Cloud TPU slice would cost: `benchmarks/accelerator_cost.py` on TPU slices only.

  pip install -e '.[tpu]'                # libtpu: compiles for TPUs on any machine
  python benchmarks/tpu_cost.py          # the paper's config on v5e:2x4 and v4:2x2x1
  python benchmarks/tpu_cost.py --slices v5e:2x4,v5p:2x2x1,v6e:2x2 --batch 25,50

The same tables as ``accelerator_cost.py --targets <slices>`` (which also costs NVIDIA GPUs); the
other options (--size, --vocab, --json, --set) pass through.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks import accelerator_cost  # noqa: E402  pylint: disable=g-import-not-at-top


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
  parser.add_argument("--slices", default="v5e:2x4,v4:2x2x1")
  args, rest = parser.parse_known_args(argv)
  return accelerator_cost.main(["--targets", args.slices, *rest])


if __name__ == "__main__":
  sys.exit(main())
