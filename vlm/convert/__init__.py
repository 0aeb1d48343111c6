"""Data conversion: public annotation formats into prism-vlm's JSONL manifests (``annotations``) and
instruction-tuning conversation rows into chat messages (``conversations``)."""
