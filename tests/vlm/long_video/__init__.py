"""Tests of ``vlm.long_video``."""
