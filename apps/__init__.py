"""User-facing applications of prism-vlm (the Gradio app)."""
