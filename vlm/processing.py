"""Preparing a glue's inputs: video files sampled and preprocessed into clips, prompts tokenised.

The one place video files become pixels for the glue (:meth:`vlm.model.VideoLanguageModel.load_videos`
and the file-level tasks go through it; the app and the batch captioner decode through
``encoder.clips`` / ``encoder.video`` with their own limits).
"""

from __future__ import annotations

import os


class UnreadableVideoError(ValueError):
    """A video file the decoder rejects."""


class PrismVlmProcessor:
    """Prepares a glue's inputs: samples and preprocesses videos and tokenises prompts.

    ``processor(videos=[paths or frame arrays], text=[prompts])`` -> ``BatchFeature`` with
    ``pixel_values_videos`` [B, T, S, S, 3] float RGB in [0, 1] (the glue's T frames at its frame size,
    segment centres; what ``caption(clips=...)``, ``answer(..., clips=...)`` and ``chat(..., clips=...)``
    take) and ``input_ids`` / ``attention_mask`` [B, L] (left-padded, no special tokens: the text that
    follows the video tokens). Videos are decoded by ``encoder.video.load_clip`` rather than
    transformers' video processors: its decoding is bounded for any file (seeking, frame budget, time
    limit, frame-size checks), which a server that takes uploads needs.
    """

    def __init__(self, tokenizer, num_frames: int, frame_size: int):
        self.tokenizer, self.num_frames, self.frame_size = tokenizer, int(num_frames), int(frame_size)

    @classmethod
    def from_model(cls, model) -> PrismVlmProcessor:
        """The processor of a ``VideoLanguageModel`` (or of the ``PrismVlmForConditionalGeneration`` wrapping one)."""
        vlm = getattr(model, "vlm", model)
        return cls(vlm.tokenizer, vlm.config.num_frames, vlm.config.frame_size)

    def __call__(self, videos=None, text=None, num_frames: int | None = None, return_tensors: str = "pt"):
        import numpy as np
        import torch
        from transformers import BatchFeature

        from encoder.video import VideoDecodeError, load_clip

        if videos is None and text is None:
            raise ValueError("give videos, text or both")
        data = {}
        if videos is not None:
            videos = [videos] if isinstance(videos, (str, os.PathLike)) else list(videos)
            clips = []
            for video in videos:
                try:
                    clips.append(load_clip(video, num_frames=num_frames or self.num_frames, size=self.frame_size))
                except VideoDecodeError as error:
                    raise UnreadableVideoError(str(error)) from error
            data["pixel_values_videos"] = torch.from_numpy(np.stack(clips))
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            encoded = self.tokenizer(texts, add_special_tokens=False, padding=True, padding_side="left",
                                     return_tensors=return_tensors)
            data.update(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"])
        return BatchFeature(data=data, tensor_type=None)
