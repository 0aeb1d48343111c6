"""Tests of ``vlm.training``."""
