"""Tests of ``vlm.retrieval``."""
