"""Input pipeline: tfds builders (synthetic_cxr, mimic_cxr), text vocabulary, batching."""
