"""Builds the iu_xray dataset (Indiana University collection, Open-i) from a manual dir; run
from the repository root:

  python -m input_pipeline.iu_xray --config=paper --manual_dir=/path/to/iu_xray \
      --data_dir=$HOME/tensorflow_datasets
"""

from input_pipeline import prepare
from input_pipeline.iu_xray import iu_xray_dataset_builder

if __name__ == "__main__":
  prepare.run(
    iu_xray_dataset_builder.Builder,
    "The directory with NLMCXR_reports.tgz (or ecgen-radiology/), NLMCXR_png.tgz (or "
    "its PNGs) and indiana_projections.csv (see MANUAL_DOWNLOAD_INSTRUCTIONS).",
  )
