"""Inference over the glue model: the tasks (``tasks``: captions, answers, candidate scores, chat,
over tensors and video files), text generation through ``generate()`` (``generation``), closed-vocabulary
scoring (``scoring``) and resumable captioning of whole folders (``batch_caption``)."""
