"""``prism-vlm chat VIDEO``: chat about a video in the terminal (replies streamed; ``/reset`` starts
over, ``/quit`` or end of input leaves), or one-shot for scripts with ``--message TEXT`` (repeatable:
one turn each; ``--json`` prints the turns). The video is decoded and encoded once; every turn is
rendered with the LLM's chat template, the video at the start of the first user turn, as the glue
was trained (``vlm.chat_template``)."""

from __future__ import annotations

import argparse
import json
import sys

from encoder.common.cli_arguments import FRAMES, NEW_TOKENS, POSITIVE
from encoder.common.errors import UsageError
from vlm.cli.long_video import add_long_video_options, open_long_video_qa
from vlm.cli.options import add_generation_options, generation_settings

HELP = "/reset starts a new conversation about the same video, /quit (or Ctrl-D) leaves"


class ChatSession:
    """The turns of one chat about one video's encoder tokens, the history in the prompt bounded to the
    last ``max_exchanges`` exchanges as in the app (the video stays at the start of the first kept user turn).
    assistant: a :class:`vlm.inference.assistant.VideoAssistant`; video_tokens: [1, M, D]."""

    def __init__(self, assistant, video_tokens, max_new_tokens: int, max_exchanges: int = 8, generation=None):
        if max_exchanges < 1:
            raise ValueError(f"max_exchanges must be >= 1, got {max_exchanges}")
        self.assistant, self.video_tokens = assistant, video_tokens
        self.max_new_tokens, self.max_exchanges = max_new_tokens, max_exchanges
        self.generation = generation  # vlm.inference.generation.GenerationSettings (None: greedy)
        self.turns: list[dict] = []  # every turn, for --json
        self.history: list[dict] = []  # what the model sees

    def reset(self) -> None:
        self.history = []

    def send(self, message: str):
        """Stream the reply to ``message`` piece by piece; the exchange joins the history at the end."""
        from vlm.chat_template import recent_turns
        from vlm.prompts import ChatMessagesError

        text = " ".join(message.split())
        if not text:
            raise ChatMessagesError("the message is empty")
        messages = recent_turns(self.history, self.max_exchanges) + [{"role": "user", "content": text}]
        pieces = []
        for piece in self.assistant.chat_stream(
            messages, video_tokens=self.video_tokens, max_new_tokens=self.max_new_tokens, generation=self.generation
        ):
            if not pieces:
                piece = piece.lstrip()  # the reply as recorded: no leading space
                if not piece:
                    continue
            pieces.append(piece)
            yield piece
        reply = "".join(pieces).strip()
        exchange = [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
        self.history = messages[:-1] + exchange
        self.turns += exchange


class LongVideoChatSession:
    """The turns of a chat about a long video: each message is answered from the windows it concerns, the
    reply naming their times (:class:`vlm.long_video.questions.LongVideoQA`)."""

    def __init__(self, qa):
        self.qa = qa
        self.turns: list[dict] = []

    def reset(self) -> None:
        pass  # each long-video question is answered on its own

    def send(self, message: str):
        from encoder.common.errors import UsageError

        text = " ".join(message.split())
        if not text:
            raise UsageError("the message is empty")
        reply = self.qa.reply([{"role": "user", "content": text}]).text
        self.turns += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
        yield reply


def open_session(args: argparse.Namespace) -> ChatSession | LongVideoChatSession:
    """A chat about ``args.video``: a clip's (the video encoded once), or a long video's (longer than one
    ``--window``: read once as windows, each question answered from the windows it concerns)."""
    import torch

    from encoder.videoprism.features import encode_clips
    from encoder.videoprism.loading import default_device
    from vlm.inference.assistant import load_assistant
    from vlm.model import MissingVideoInputError

    device = args.device or default_device()
    assistant = load_assistant(args.model, device=device)
    if assistant.model.encoder is None:
        raise MissingVideoInputError("the model has no video encoder to read the video with")
    long_video = open_long_video_qa(args, assistant, device)
    if long_video is not None:
        return LongVideoChatSession(long_video)
    clips = assistant.load_videos([args.video], args.frames)
    with torch.inference_mode():
        tokens = encode_clips(assistant.model.encoder, clips)
    return ChatSession(assistant, tokens, args.max_new_tokens, args.max_exchanges, generation_settings(args))


def _one_shot(session: ChatSession, messages: list[str], as_json: bool, video: str) -> int:
    for message in messages:
        if as_json:
            "".join(session.send(message))
            continue
        print(f"you> {' '.join(message.split())}")
        print("assistant> ", end="", flush=True)
        for piece in session.send(message):
            print(piece, end="", flush=True)
        print()
    if as_json:
        print(json.dumps({"video": video, "turns": session.turns}, indent=2, ensure_ascii=False))
    return 0


def _interactive(session: ChatSession) -> int:
    print(f"chatting about the video; {HELP}", file=sys.stderr)
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        command = line.strip().lower()
        if command in ("/quit", "/exit"):
            return 0
        if command == "/reset":
            session.reset()
            print("(new conversation)", file=sys.stderr)
            continue
        if command.startswith("/"):
            print(f"unknown command {command!r}; {HELP}", file=sys.stderr)
            continue
        if not command:
            continue
        print("assistant> ", end="", flush=True)
        try:
            for piece in session.send(line):
                print(piece, end="", flush=True)
        except KeyboardInterrupt:
            print(" (interrupted)", end="")
        print()


def _cmd_chat(args: argparse.Namespace) -> int:
    if args.json and not args.message:
        raise UsageError("--json needs --message (the interactive chat prints as it goes)")
    if any(not m.strip() for m in args.message or []):
        raise UsageError("--message must not be empty")
    session = open_session(args)
    if args.message:
        return _one_shot(session, args.message, args.json, args.video)
    return _interactive(session)


def add_subcommand(subparsers) -> None:
    chat = subparsers.add_parser(
        "chat",
        help="chat about a video in the terminal (or one-shot with --message)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    chat.add_argument("video", help="video file")
    chat.add_argument(
        "--message",
        action="append",
        default=None,
        metavar="TEXT",
        help="send TEXT and print the reply, no prompt; repeat for several turns",
    )
    chat.add_argument("--json", action="store_true", help="with --message: print the turns as JSON")
    chat.add_argument("--model", default=None, help="saved glue model directory (default: the installed demo model)")
    chat.add_argument(
        "--frames", type=FRAMES, default=None, help="frames sampled from the video (default: the model's)"
    )
    chat.add_argument(
        "--max-new-tokens", type=NEW_TOKENS, default=128, help="at most this many tokens per reply (default 128)"
    )
    chat.add_argument(
        "--max-exchanges", type=POSITIVE, default=8, help="exchanges kept in the prompt (default 8, as the app)"
    )
    chat.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")

    add_generation_options(chat)
    add_long_video_options(chat)
    chat.set_defaults(func=_cmd_chat)
