"""Tests of ``vlm``."""
