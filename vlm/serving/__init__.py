"""Serving many requests with one model: the continuous batcher (``continuous_batching``), whose one
worker owns the model while requests join and leave a running batch."""
