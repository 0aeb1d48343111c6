"""Tests of ``vlm.inference``."""
