"""Training: the trainer (TRL SFTTrainer with the diffusion loss), attention for packed rows, and one
run from a recipe (run), its checkpoints, records, model card and step arithmetic."""
