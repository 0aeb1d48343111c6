"""Tests of ``vlm.evaluation``."""
