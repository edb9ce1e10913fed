"""Old module paths of the flat layout (before the wings), kept importable for users' code.

``import mopoe_jax.train`` still works: it gives the module's new home (`mopoe_jax.training.loop`)
under the old name, with a FutureWarning that names the new path. The two tools that left the
library (they only served benchmarks and tests) fail with an error that says where they are.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

# Old module under mopoe_jax -> its new dotted path.
MOVED = {
  "paths": "mopoe_jax.platform.paths",
  "runtime": "mopoe_jax.platform.runtime",
  "compilation": "mopoe_jax.platform.compilation",
  "sharding": "mopoe_jax.platform.sharding",
  "speed": "mopoe_jax.platform.speed",
  "datasource": "mopoe_jax.data.datasource",
  "text": "mopoe_jax.data.text",
  "images": "mopoe_jax.data.images",
  "reports": "mopoe_jax.data.report_text",
  "visualize": "mopoe_jax.data.visualize",
  "subsets": "mopoe_jax.vae.subsets",
  "fusion": "mopoe_jax.vae.fusion",
  "layers": "mopoe_jax.vae.layers",
  "cpu_conv": "mopoe_jax.vae.cpu_conv",
  "networks": "mopoe_jax.vae.networks",
  "model": "mopoe_jax.vae.model",
  "objective": "mopoe_jax.vae.objective",
  "step": "mopoe_jax.training.step",
  "train": "mopoe_jax.training.loop",
  "programs": "mopoe_jax.training.programs",
  "checkpointing": "mopoe_jax.training.checkpointing",
  "fingerprint": "mopoe_jax.training.fingerprint",
  "training_grids": "mopoe_jax.training.grids",
  "model_file": "mopoe_jax.training.model_file",
  "evaluate": "mopoe_jax.evaluation.evaluate",
  "classifiers": "mopoe_jax.evaluation.classifiers",
  "charts": "mopoe_jax.evaluation.charts",
  "evaluators": "mopoe_jax.evaluation.registry",
  "evaluators.common": "mopoe_jax.evaluation.common",
  "evaluators.probes": "mopoe_jax.evaluation.probes",
  "evaluators.probe_report": "mopoe_jax.evaluation.probes_markdown",
  "evaluators.coherence": "mopoe_jax.evaluation.coherence",
  "evaluators.generation": "mopoe_jax.evaluation.generation",
  "evaluators.likelihood": "mopoe_jax.evaluation.likelihood",
}
# Old modules that left the library -> where they are now.
LEFT = {
  "lowering": "benchmarks/costing/lowering.py (import benchmarks.costing.lowering from the "
  "repository root)",
  "tpu_cost": "benchmarks/costing/tpu_cost.py (import benchmarks.costing.tpu_cost from the "
  "repository root)",
}
_PACKAGES = ("evaluators",)  # old packages: their alias takes submodule imports


class _Alias(importlib.abc.Loader):
  def __init__(self, old: str, new: str):
    self.old, self.new = old, new

  def create_module(self, spec):
    warnings.warn(
      f"{spec.name} moved to {self.new}: import that instead", FutureWarning, stacklevel=4
    )
    module = importlib.import_module(self.new)
    if self.old in _PACKAGES:  # a stand-in that lets `import mopoe_jax.evaluators.probes` work
      alias = types.ModuleType(spec.name, module.__doc__)
      alias.__dict__.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
      alias.__path__ = []
      return alias
    return module

  def exec_module(self, module):
    pass


class _MovedFinder(importlib.abc.MetaPathFinder):
  def find_spec(self, fullname, path, target=None):
    if not fullname.startswith("mopoe_jax."):
      return None
    old = fullname[len("mopoe_jax.") :]
    if old in LEFT:
      raise ModuleNotFoundError(f"{fullname} left the library: it is {LEFT[old]}", name=fullname)
    if old in MOVED:
      return importlib.util.spec_from_loader(fullname, _Alias(old, MOVED[old]))
    return None


def install() -> None:
  if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedFinder())
