"""Training: flow-matching teacher, rCM distillation, LoRA finetune (loss math, loops and data kept apart)."""
