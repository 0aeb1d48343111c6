"""Tests of ``vlm.serving``."""
