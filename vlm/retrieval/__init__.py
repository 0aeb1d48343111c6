"""Zero-shot video-text retrieval and classification with a VideoPrism video-text model (paper section 3.2).

``video_text_model`` loads a model and embeds clips and texts, ``index`` builds and searches an
on-disk index of clip embeddings, ``zero_shot`` turns labels into text embeddings (prompt
templates), ``metrics`` computes recall and accuracy and ``evaluation`` runs them over manifests; the
``prism-vlm`` commands are in ``vlm.cli.retrieval``.
"""
