"""Tests of ``encoder``."""
