"""Tests of ``vlm.cli``."""
