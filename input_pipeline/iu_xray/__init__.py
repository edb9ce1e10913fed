"""The ``iu_xray`` tfds builder (Indiana University collection, Open-i; manual download);
importing this package registers it."""

from input_pipeline.iu_xray.iu_xray_dataset_builder import (
  MANUAL_DOWNLOAD_INSTRUCTIONS,
  Builder,
  IuXrayConfig,
)

__all__ = ["Builder", "IuXrayConfig", "MANUAL_DOWNLOAD_INSTRUCTIONS"]
