"""dlm-sft: supervised fine-tuning for masked diffusion language models."""

__version__ = "0.1.0"
