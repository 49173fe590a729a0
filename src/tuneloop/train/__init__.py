"""Training recipes: sft (supervised fine-tuning); shared batching, methods, checkpoints, callbacks."""
