"""Tests of ``apps``."""
