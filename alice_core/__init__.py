"""Alice: fast 4-step text-to-video (rCM-distilled Wan architecture). No ComfyUI or Gradio imports here."""

__version__ = "0.1.0"
