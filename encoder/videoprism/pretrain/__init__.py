"""Two-stage VideoPrism pretraining (paper section 2.3, appendix C).

* ``encoder.videoprism.pretrain.stage1``: video-text contrastive training of a ``VideoPrismClipModel``
  (encoder + MAP head, text tower with a class token at the end), 50% of video tokens dropped by
  tube masking, alternating gradient descent over several caption datasets.
* ``encoder.videoprism.pretrain.stage2``: masked video modelling with token shuffling and global-local
  distillation from the frozen stage-1 model; the output is a ``VideoPrismVisionModel``.
* ``encoder.videoprism.pretrain.lit``: the text tower and MAP head tuned against the frozen stage-2 encoder.

Supporting modules: ``data`` (caption manifests, alternating batches), ``tokenizer`` (a
SentencePiece vocabulary trained on captions), ``heads`` (decoders, projector, MASK token, MAP
pooling), ``losses``, ``loop`` (the stages' loop on the shared harness ``encoder.training.run``); the
``prism-vlm pretrain`` command is ``vlm.cli.pretrain``.
Nothing is imported here, so ``prism-vlm`` starts fast.
"""
