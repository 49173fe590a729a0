"""Training recipes: sft (supervised fine-tuning); methods, checkpoints, callbacks."""
