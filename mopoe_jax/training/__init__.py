"""The training wing: the train step and the loop around it, and checkpoints.

The pure train and eval steps, the optimizer and the config checks (`step`), the loop
(`loop.train_and_evaluate`), its compiled programs behind one call (`programs`), Orbax
checkpoints with restore of the newest step that restores (`checkpointing`), the fields a
checkpoint records and their check (`fingerprint`), ``model.json`` (`model_file`: what a trained
model needs besides its arrays), TensorBoard generation grids (`grids`).

May import: `mopoe_jax.vae`, `mopoe_jax.data`, `mopoe_jax.platform`.
"""
