"""Checkpoint formats: reading files safely, detecting layouts, converting state dicts."""
