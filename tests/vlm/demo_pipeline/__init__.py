"""Tests of ``vlm.demo_pipeline``."""
