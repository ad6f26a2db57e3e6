"""Export: a training output or LoRA adapter as a standalone checkpoint in the base's layout
(exporter), with LoRA merged per tensor (adapters), size-bounded safetensors shards (shards) and a
model card (model_card)."""
