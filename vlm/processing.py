"""Preparing a glue's inputs: video files sampled and preprocessed into clips, prompts tokenised,
training examples (captions, QA pairs, conversations) tokenised with their labels.

The one place video files become pixels for the glue (:meth:`vlm.inference.assistant.VideoAssistant.load_videos`
and the file-level tasks go through it; the app and the batch captioner decode through
``encoder.video.clips`` / ``encoder.video.decode`` with their own limits).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from encoder.common.errors import PrismVlmError


class UnreadableVideoError(PrismVlmError, ValueError):
    """A video file the decoder rejects."""


class PrismVlmProcessor:
    """Prepares a glue's inputs: samples and preprocesses videos and tokenises prompts.

    ``processor(videos=[paths or frame arrays], text=[prompts])`` -> ``BatchFeature`` with
    ``pixel_values_videos`` [B, T, S, S, 3] float RGB in [0, 1] (the glue's T frames at its frame size,
    segment centres; what ``caption(clips=...)``, ``answer(..., clips=...)`` and ``chat(..., clips=...)``
    take) and ``input_ids`` / ``attention_mask`` [B, L] (left-padded, no special tokens: the text that
    follows the video tokens). Videos are decoded by ``encoder.video.decode.load_clip`` rather than
    transformers' video processors: its decoding is bounded for any file (seeking, frame budget, time
    limit, frame-size checks), which a server that takes uploads needs.
    """

    def __init__(self, tokenizer, num_frames: int, frame_size: int, end_of_turn_ids: Sequence[int] = ()):
        self.tokenizer, self.num_frames, self.frame_size = tokenizer, int(num_frames), int(frame_size)
        self.end_of_turn_ids = tuple(end_of_turn_ids)  # the LLM's stop tokens: a chat turn's labelled end

    @classmethod
    def from_model(cls, model) -> PrismVlmProcessor:
        """The processor of a glue model (``vlm.model.PrismVlmForConditionalGeneration``)."""
        from vlm.inference.generation import stop_token_ids

        return cls(
            model.tokenizer,
            model.config.num_frames,
            model.config.frame_size,
            stop_token_ids(model.llm, model.tokenizer),
        )

    def __call__(self, videos=None, text=None, num_frames: int | None = None, return_tensors: str = "pt"):
        import numpy as np
        import torch
        from transformers import BatchFeature

        from encoder.video.decode import VideoDecodeError, load_clip

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
            encoded = self.tokenizer(
                texts, add_special_tokens=False, padding=True, padding_side="left", return_tensors=return_tensors
            )
            data.update(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"])
        return BatchFeature(data=data, tensor_type=None)

    def training_texts(
        self,
        prompts: Sequence[str],
        targets: Sequence[str],
        max_target_tokens: int | None = None,
        conversations: Sequence[Sequence[dict] | None] | None = None,
    ) -> list:
        """Token ids and labels of each training example around its video: B :class:`vlm.chat_template.ChatIds`.

        Row b is the conversation ``conversations[b]`` when one is given (prompt and target unused):
        rendered by :func:`vlm.chat_template.chat_training_ids`, labels on the assistant turns and
        their end-of-turn tokens, whole turns kept up to ``max_target_tokens`` labelled tokens.
        Otherwise: [leading special ids] [video] [prompt b] [target b] [EOS], the target text being
        ``answer_continuation(target)`` (a space, then the stripped text -- what captioning and QA
        continue the prompt with) cut to ``max_target_tokens`` tokens, labelled with EOS.
        """
        from vlm.chat_template import IGNORE_INDEX, ChatIds, chat_training_ids
        from vlm.prompts import answer_continuation, leading_special_ids, text_ids

        if len(prompts) != len(targets) or (conversations is not None and len(conversations) != len(prompts)):
            raise ValueError(
                f"need one prompt, target and conversation per example: {len(prompts)} prompts, "
                f"{len(targets)} targets, {None if conversations is None else len(conversations)} conversations"
            )
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ValueError(f"the tokenizer {type(self.tokenizer).__name__} has no EOS token to end targets with")
        leading = tuple(leading_special_ids(self.tokenizer))
        texts = []
        for row, (prompt, target) in enumerate(zip(prompts, targets)):
            if conversations is not None and conversations[row] is not None:
                texts.append(
                    chat_training_ids(self.tokenizer, conversations[row], self.end_of_turn_ids, max_target_tokens)
                )
                continue
            ids = text_ids(self.tokenizer, answer_continuation(target))
            if max_target_tokens is not None:
                ids = ids[:max_target_tokens]
            ids = [*ids, eos]
            prompt_ids = text_ids(self.tokenizer, prompt)
            texts.append(ChatIds(leading, (*prompt_ids, *ids), (IGNORE_INDEX,) * len(prompt_ids) + tuple(ids)))
        return texts
