"""prism-vlm: the video-language assistant (resampler glue, generation, scoring, CLI)."""

__version__ = "0.1.0"
