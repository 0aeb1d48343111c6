"""Tests of ``vlm.convert``."""
