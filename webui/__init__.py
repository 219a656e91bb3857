"""Alice's local web app (Gradio). `alice app` starts it; see webui/app.py."""
