"""Helpers the tests share: tiny random models, generated videos, fixture paths, script loading."""
