"""`dlm-sft plan`: model shapes, data size, per-GPU memory, and the rendered plan."""
