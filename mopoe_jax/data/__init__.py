"""The data wing: what a study is, shared by the builders, the model and a trained model.

The modality registry (`modalities`: each modality's name, kind and batch keys, from which the
model, the batch layout and a trained model's file reading are derived), the contract of a data
source and a batch (`datasource`), the labels and the Finding rules (`labels`), and the formats a
study comes in, TensorFlow-free: the report tokenizer and vocabulary (`text`), image decoding
(`images`), report sections (`report_text`), image grids (`visualize`).

May import: `mopoe_jax.platform`.
"""
