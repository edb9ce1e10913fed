"""The ``mimic_cxr`` tfds builder (manual download); importing this package registers it."""

from input_pipeline.mimic_cxr.mimic_cxr_dataset_builder import (
  MANUAL_DOWNLOAD_INSTRUCTIONS,
  Builder,
  MimicCxrConfig,
)

__all__ = ["Builder", "MANUAL_DOWNLOAD_INSTRUCTIONS", "MimicCxrConfig"]
