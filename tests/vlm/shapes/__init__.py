"""Tests of ``vlm.shapes``."""
