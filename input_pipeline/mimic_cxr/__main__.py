"""Builds the mimic_cxr dataset from a manual dir; run from the repository root:

  python -m input_pipeline.mimic_cxr --config=paper \
      --manual_dir=/path/to/physionet.org/files/mimic-cxr-jpg/2.0.0 \
      --data_dir=$HOME/tensorflow_datasets
"""

from input_pipeline import prepare
from input_pipeline.mimic_cxr import mimic_cxr_dataset_builder

if __name__ == "__main__":
  prepare.run(
    mimic_cxr_dataset_builder.Builder,
    "The directory with the MIMIC-CXR-JPG files/ tree, its CSVs and the reports (see "
    "MANUAL_DOWNLOAD_INSTRUCTIONS).",
  )
