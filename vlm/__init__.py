"""prism-vlm, the video-language assistant: the glue model (``model``, its config in ``configuration``, with
``resampler``, ``processing``, ``llm``, ``prompts``, ``chat_template`` and the Hub side in ``hub``), and
in subpackages inference over it (``inference``), long videos read as windows (``long_video``), serving
many requests (``serving``), evaluation (``evaluation``), video-text retrieval (``retrieval``), data
conversion (``convert``), glue training (``training``), the moving-shapes corpus (``shapes``), the demo
pipeline (``demo_pipeline``) and the ``prism-vlm`` command line (``cli``)."""

__version__ = "0.1.0"
