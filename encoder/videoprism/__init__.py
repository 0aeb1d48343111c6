"""The VideoPrism encoder: loading from any source (``loading``), the official-checkpoint converter
(``convert``), forward passes transformers does not offer (``factorized``), batched frozen features and
their on-disk cache (``features``), FLOP counts (``flops``), pretraining masks (``masking``), frozen-feature
probes (``probe``), the video-text model's tokenizer (``text_tokenizer``) and the two-stage pretraining
(``pretrain``)."""
