"""Torch execution: model loading, scoring, the train loop's parts (backends, checkpoints,
batches, optimiser), process groups, planning and prediction."""
