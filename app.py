"""Hugging Face Spaces entry point (Gradio SDK): the vitscope web app on the bundled demo models.

Locally: `python app.py` (or `vitscope app`). Add models with VITSCOPE_APP_MODELS="demo-vit,dino-vits16".
"""
import os

from vitscope.app.ui import build_app

models = [m.strip() for m in os.environ.get("VITSCOPE_APP_MODELS", "").split(",") if m.strip()] or None
demo, state = build_app(models)

if __name__ == "__main__":
    host = "0.0.0.0" if os.environ.get("SPACE_ID") else os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    demo.launch(server_name=host, allowed_paths=[], max_file_size=state.max_bytes, show_error=True, ssr_mode=False)
