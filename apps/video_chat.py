"""The Gradio page: upload or pick a clip, see the frames the model samples, describe it, chat about
it, ask open- or closed-vocabulary questions; a thin layer over :class:`apps.service.ModelService`.

Named API endpoints (gradio_client): ``/caption`` (video, frames, max_new_tokens -> caption),
``/ask`` (video, question, candidates, frames, max_new_tokens -> answer, candidate probabilities;
empty candidates = open vocabulary) and ``/chat`` (video, message, history, frames, max_new_tokens
-> streamed chat history); with a video-text model, ``/labels`` (video, labels -> zero-shot label
probabilities) and, with ``--search-dir``, ``/search`` (text, results -> matching clips, with scores).
Long videos (longer than one window, :mod:`apps.long_video`): ``/timeline`` (video -> [{"start", "end",
"caption"}]), ``/find`` (video, text, results -> [{"start", "end", "score"}]), and ``/chat`` replies naming
the times they were read from. Every other event is private.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr
import numpy as np

from apps.limits import VIDEO_SUFFIXES, VideoRejectedError
from apps.long_video import MAX_FIND_RESULTS, LongVideoService
from apps.search import MAX_RESULTS, SearchService
from apps.service import AppInputError, FrameStrip, ModelService, parse_candidates
from encoder.common.errors import PrismVlmError
from vlm.inference.generation import GenerationSettings
from vlm.inference.scoring import CandidateError
from vlm.long_video.timeline import clock
from vlm.processing import UnreadableVideoError
from vlm.prompts import ChatMessagesError, EmptyQuestionError
from vlm.shapes.language import ANSWER_VOCABULARY

if TYPE_CHECKING:
    from apps.openai_server import ServerConfig

logger = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"

CANDIDATE_PRESETS: dict[str, list[str]] = {
    # the answer words of the moving-shapes corpus (vlm.shapes), which the demo model was trained on
    "colours (shapes corpus)": list(ANSWER_VOCABULARY["colour"]),
    "shapes (shapes corpus)": list(ANSWER_VOCABULARY["shape"]),
    "motions (shapes corpus)": list(ANSWER_VOCABULARY["motion"]),
    "counts (shapes corpus)": list(ANSWER_VOCABULARY["count"]),
    # general-purpose sets for models trained on real video
    "yes / no": ["yes", "no"],
    "numbers": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"],
    "actions": [
        "playing",
        "drumming",
        "dancing",
        "singing",
        "talking",
        "cooking",
        "walking",
        "running",
        "jumping",
        "swimming",
    ],
    "objects": ["bottle", "ball", "drum", "person", "dog", "cat", "car", "table", "chair", "cup", "phone"],
}
NO_PRESET = "(type your own)"
OPEN, CLOSED = "open vocabulary", "closed vocabulary"
TOP_CANDIDATES_SHOWN = 10
DEFAULT_MAX_NEW_TOKENS = 32  # the paper's greedy decoding length, as in `prism-vlm caption`
MODEL_QUEUE = "model"  # one concurrency group for all model work
SEARCH_QUEUE = "video-text"  # the video-text model's requests (search, zero-shot labels)

DESCRIPTION = """\
# prism-vlm: talk about a video
A frozen [VideoPrism](https://arxiv.org/abs/2402.13217) video encoder, a Perceiver Resampler and a
frozen LLM. Upload a clip or pick an example: the strip shows the frames the model actually sees.
"""


def default_examples() -> list[Path]:
    """Example clips: those shipped in ``apps/examples`` (the official VideoPrism demo clip and three
    clips of the moving-shapes corpus)."""
    return (
        sorted(p for p in EXAMPLES_DIR.glob("*") if p.suffix.lower() in VIDEO_SUFFIXES) if EXAMPLES_DIR.is_dir() else []
    )


# ---------------------------------------------------------------------------------------- errors


_SERVER_PATH = re.compile(r"(?<![\w.:/])(?:/[^/\s'\"]+)+/([^/\s'\"]+)")


def without_server_paths(text: str) -> str:
    """``text`` with every absolute path cut to its file name (the page must not reveal the
    server's folders: upload locations, the model directory, the user name in a home folder)."""
    return _SERVER_PATH.sub(r"\1", text)


def readable_error(error: BaseException) -> str:
    """A message for the page (never a traceback, never a server path): a user error
    (:class:`encoder.common.errors.PrismVlmError`) in one line, anything else as a bug, logged."""
    if isinstance(error, (AppInputError, VideoRejectedError)):
        message = str(error)
    elif isinstance(error, EmptyQuestionError):
        message = "The question is empty: type one first."
    elif isinstance(error, CandidateError):
        message = f"Candidate answers: {error}."
    elif isinstance(error, ChatMessagesError):
        message = f"Chat: {error}."
    elif isinstance(error, UnreadableVideoError):
        message = f"Could not decode the video: {error}."
    elif isinstance(error, PrismVlmError):
        message = str(error)
    else:
        message = (
            f"Something went wrong ({type(error).__name__}); the request was not completed. The server log has details."
        )
    return without_server_paths(message)


def _to_gradio_error(error: BaseException) -> gr.Error:
    if isinstance(error, gr.Error):
        return error
    if not isinstance(error, PrismVlmError):  # a bug: its traceback goes to the server log
        logger.exception("request failed", exc_info=error)
    return gr.Error(readable_error(error), print_exception=False)


def shows_errors(fn: Callable) -> Callable:
    """Wrap an event handler (function or generator) so every failure reaches the page as a
    readable gr.Error and the session stays usable."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as error:
                raise _to_gradio_error(error) from None

        return generator_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as error:
            raise _to_gradio_error(error) from None

    return wrapper


# ---------------------------------------------------------------------------------------- page text


def model_markdown(service: ModelService) -> str:
    card = service.model_card()
    limits = service.limits
    return "\n".join(
        [
            "| part | loaded |",
            "| --- | --- |",
            f"| video encoder | `{card['encoder']}` (width {card['encoder_width']}) |",
            f"| LLM | `{card['llm']}` (width {card['llm_width']}, {card['llm_parameters'] / 1e6:.1f} M parameters) |",
            f"| glue | `{card['glue']}`: Perceiver Resampler, {card['resampler']} |",
            f"| sampling | {card['frames']} frames of {card['frame_size']} x {card['frame_size']} px |",
            f"| device | {card['device']} ({card['dtype']}) |",
            "",
            f"Limits: videos up to {limits.max_upload_mb:g} MB and {limits.max_duration_s:g} s, "
            f"at most {limits.max_frames} frames and {limits.max_new_tokens} new tokens a request; "
            f"{limits.concurrency} request(s) at once, {limits.queue_size} waiting.",
        ]
    )


def long_video_text(long_videos: LongVideoService) -> str:
    limits = long_videos.limits
    return (
        f"A video longer than one window ({long_videos.window_s:g} s) is read window by window (at most "
        f"{limits.max_windows} windows a request): **Timeline** captions every window (select a row to see its "
        "frames), **Find** lists the moments a text describes, and chat replies name the times they were read from."
        + ("" if long_videos.can_find else " Find and chat need a video-text model (--video-text-model).")
    )


def _progress_reporter(progress):
    """gr.Progress as :mod:`apps.long_video`'s progress callback (done, total, what)."""
    return lambda done, total, what: progress((done, total), desc=what, unit="windows")


def _span_rows(items: list[dict] | None, column: str) -> tuple:
    """A timeline's or moments' JSON as a table ("m:ss-m:ss", caption or score) and their spans."""
    import pandas as pd

    items = items or []
    rows = [[f"{clock(item['start'])}-{clock(item['end'])}", item[column]] for item in items]
    return pd.DataFrame(rows, columns=["time", column]), [[item["start"], item["end"]] for item in items]


def _clip_markdown(path: str, strip) -> str:
    info = strip.info
    return (
        f"**{Path(path).name}**: {info.duration_s:.1f} s, {info.width} x {info.height} px; "
        f"the model sees {len(strip.frames)} frames of {strip.frames.shape[1]} x {strip.frames.shape[2]} px."
    )


def strip_image(strip: FrameStrip, columns: int = 8, min_cell: int = 128, label_height: int = 22) -> np.ndarray:
    """One image of the sampled frames, ``columns`` a row, each labelled with its time.

    Frames smaller than ``min_cell`` are enlarged by a whole factor (nearest neighbour: the model's
    pixels stay visible as they are). Returns uint8 [rows * (cell + label_height), columns * cell, 3]."""
    from PIL import Image, ImageDraw, ImageFont

    count, size = len(strip.frames), strip.frames.shape[1]
    scale = max(1, -(-min_cell // size))
    cell = size * scale
    columns = min(columns, count)
    rows = -(-count // columns)
    canvas = Image.new("RGB", (columns * cell, rows * (cell + label_height)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(12, label_height - 8))
    for index, (frame, time) in enumerate(zip(strip.frames, strip.times_s)):
        row, column = divmod(index, columns)
        left, top = column * cell, row * (cell + label_height)
        canvas.paste(Image.fromarray(frame).resize((cell, cell), Image.NEAREST), (left, top))
        draw.text(
            (left + cell // 2, top + cell + label_height // 2),
            f"{index + 1}: {time:.2f} s",
            fill=(60, 60, 60),
            font=font,
            anchor="mm",
        )
    return np.asarray(canvas)


def _chart_data(probabilities: list[dict] | None):
    import pandas as pd

    rows = (probabilities or [])[:TOP_CANDIDATES_SHOWN]
    return pd.DataFrame(
        {"answer": [row["answer"] for row in rows], "probability": [float(row["probability"]) for row in rows]}
    )


# ---------------------------------------------------------------------------------------- the page


def page_generation(
    temperature: float | None, top_p: float | None, repetition_penalty: float | None
) -> GenerationSettings:
    """The page's generation settings: temperature 0 is greedy decoding (the default), above 0
    sampling with that temperature and top-p; a repetition penalty applies to both."""
    try:
        temperature = float(temperature or 0.0)
        return GenerationSettings(
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else 1.0,
            top_p=float(top_p if top_p is not None else 1.0),
            repetition_penalty=float(repetition_penalty if repetition_penalty is not None else 1.0),
        )
    except (TypeError, ValueError) as error:
        raise AppInputError(f"Generation settings: {error}.") from None


def build_app(
    service: ModelService,
    examples: Sequence[str | os.PathLike] | None = None,
    search: SearchService | None = None,
    long_videos: LongVideoService | None = None,
) -> gr.Blocks:
    """The gr.Blocks page over ``service`` (queue and launch settings are applied by :func:`launch_app`).

    examples: clips offered as examples (default: :func:`default_examples`).
    search: the video-text side (zero-shot labels; the Search tab when it has an index), or None.
    long_videos: how uploads longer than one window are read (default: windows of 8 s with ``search``'s
    video-text model, in the user's window cache)."""
    examples = [Path(p) for p in (default_examples() if examples is None else examples)]
    limits = service.limits
    if long_videos is None:
        long_videos = LongVideoService(service, search.model if search is not None else None)

    # --------------------------------------------------------------- handlers (API names: parameters)

    @shows_errors
    def caption(
        video: str | None,
        frames: float,
        max_new_tokens: float,
        temperature: float = 0.0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
    ) -> str:
        return service.caption(video, frames, max_new_tokens, page_generation(temperature, top_p, repetition_penalty))

    @shows_errors
    def ask(
        video: str | None,
        question: str,
        candidates: str,
        frames: float,
        max_new_tokens: float,
        temperature: float = 0.0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
    ):
        result = service.ask(
            video,
            question,
            parse_candidates(candidates, limits.max_candidates),
            frames,
            max_new_tokens,
            page_generation(temperature, top_p, repetition_penalty),
        )
        return result.answer, result.probabilities()

    @shows_errors
    def chat(
        video: str | None,
        message: str,
        history: list,
        frames: float,
        max_new_tokens: float,
        temperature: float = 0.0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        progress=gr.Progress(),  # shown while a long video is read
    ):
        history = list(history or [])
        prompt = service.chat_prompt(history, message)  # an empty or overlong message fails here
        if prompt.dropped_turns:
            gr.Info(
                f"The {prompt.dropped_turns} oldest turns of this chat are left out of the model's prompt "
                f"(it keeps {limits.max_chat_turns} exchanges, {limits.max_history_tokens} tokens)."
            )
        generation = page_generation(temperature, top_p, repetition_penalty)
        if long_videos.is_long(video):  # read window by window; the reply names the times, in one piece
            pieces = long_videos.reply_stream(
                video, prompt.messages, max_new_tokens, generation, _progress_reporter(progress)
            )
        else:
            pieces = service.chat_stream(
                video, num_frames=frames, max_new_tokens=max_new_tokens, generation=generation, prompt=prompt
            )
        try:
            reply = next(pieces, None) or ""  # fails here (no video, empty message ...) before the chat changes
            history = history + [{"role": "user", "content": message}, {"role": "assistant", "content": reply}]
            yield history, ""
            for piece in pieces:
                reply += piece
                history[-1] = {"role": "assistant", "content": reply}
                yield history, ""
        finally:
            pieces.close()

    @shows_errors
    def labels(video: str | None, label_text: str) -> dict[str, float]:
        if search is None:
            raise AppInputError("This app was started without a video-text model (--video-text-model).")
        return search.classify(video, label_text)

    @shows_errors
    def find_clips(query: str, results: float):
        if search is None:
            raise AppInputError("This app was started without a video-text model (--video-text-model).")
        hits = search.search(query, results)
        gallery = [(hit.video, f"{hit.name}  ·  {hit.score:.3f}") for hit in hits]
        return gallery, [
            {"rank": rank + 1, "clip": hit.name, "score": round(hit.score, 4)} for rank, hit in enumerate(hits)
        ]

    @shows_errors
    def timeline(video: str | None, progress=gr.Progress()) -> list[dict]:
        return [segment.to_dict() for segment in long_videos.timeline(video, _progress_reporter(progress))]

    @shows_errors
    def find(video: str | None, text: str, results: float = 5, progress=gr.Progress()) -> list[dict]:
        return [moment.to_dict() for moment in long_videos.find(video, text, results, _progress_reporter(progress))]

    def show_moment(video: str | None, spans: list, frames: float, event: gr.SelectData):
        """The frames the model samples from the selected row's span."""
        row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
        if not video or not spans or not 0 <= row < len(spans):
            return None, ""
        start, end = spans[row]
        try:
            moment = long_videos.moment_strip(video, start, end, frames)
        except Exception as error:
            if not isinstance(error, PrismVlmError):
                logger.exception("moment strip failed", exc_info=error)
            gr.Warning(readable_error(error))
            return None, ""
        return strip_image(moment), f"**{clock(start)}-{clock(end)}**: the {len(moment.frames)} frames the model sees."

    def new_long_video(video: str | None):
        """A new upload empties the long-video results and says how many windows it has."""
        empty_timeline, _ = _span_rows([], "caption")
        empty_moments, _ = _span_rows([], "score")
        cleared = (None, empty_timeline, [], None, empty_moments, [], None, "")
        count = long_videos.window_count(video) if video and long_videos.is_long(video) else 0
        facts = (
            f"This video has {count} windows of {long_videos.window_s:g} s"
            + (f": more than this app reads ({limits.max_windows})." if count > limits.max_windows else ".")
            if count
            else ""
        )
        return (*cleared, facts)

    def show_video(video: str | None, frames: float):
        """Preview, frame strip and clip facts for a new clip (a bad clip: a message, no strip)."""
        cleared = ("", "", [], None, [], None)  # caption, answer, probabilities, chart, chat, zero-shot labels
        if not video:
            return (gr.update(value=None, visible=True), gr.update(value=None, visible=False), None, "", *cleared)
        is_gif = Path(video).suffix.lower() == ".gif"
        video_update = gr.update(value=None if is_gif else video, visible=not is_gif)
        gif_update = gr.update(value=video if is_gif else None, visible=is_gif)
        try:
            strip = service.frame_strip(video, frames)
        except Exception as error:
            message = readable_error(error)
            if not isinstance(error, PrismVlmError):
                logger.exception("frame strip failed", exc_info=error)
            gr.Warning(message)
            return (
                gr.update(value=None, visible=True),
                gr.update(value=None, visible=False),
                None,
                f"**Cannot use this clip.** {message}",
                *cleared,
            )
        return (video_update, gif_update, strip_image(strip), _clip_markdown(video, strip), *cleared)

    def update_strip(video: str | None, frames: float):
        if not video:
            return None, ""
        try:
            strip = service.frame_strip(video, frames)
        except Exception as error:
            message = readable_error(error)
            gr.Warning(message)
            return None, f"**Cannot use this clip.** {message}"
        return strip_image(strip), _clip_markdown(video, strip)

    def switch_vocabulary(vocabulary: str, candidates: str, stash: str):
        """Open vocabulary hides (and stashes) the candidates, so /ask receives none."""
        if vocabulary == OPEN:
            return gr.update(value="", visible=False), gr.update(visible=False), candidates or stash
        return gr.update(value=candidates or stash, visible=True), gr.update(visible=True), stash

    def use_preset(preset: str, candidates: str):
        return candidates if preset == NO_PRESET else ", ".join(CANDIDATE_PRESETS[preset])

    def require_candidates(vocabulary: str, candidates: str) -> None:
        if vocabulary == CLOSED and not (candidates or "").strip():
            raise gr.Error(
                "Closed vocabulary needs candidate answers: type them (comma-separated or one per line) "
                "or pick a preset, or switch to open vocabulary.",
                print_exception=False,
            )

    # --------------------------------------------------------------- layout

    ttl = int(limits.upload_ttl_s)
    with gr.Blocks(title="prism-vlm", analytics_enabled=False, delete_cache=(max(60, ttl // 4), ttl)) as demo:
        gr.Markdown(DESCRIPTION)
        with gr.Tab("Assistant", elem_id="assistant-tab"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=2, min_width=320):
                    video = gr.File(
                        label="Video",
                        file_types=list(VIDEO_SUFFIXES),
                        type="filepath",
                        height=120,
                        elem_id="video-upload",
                    )
                    gr.Markdown(
                        f"{', '.join(s.lstrip('.') for s in VIDEO_SUFFIXES)}; up to {limits.max_upload_mb:g} MB "
                        f"and {limits.max_duration_s:g} s",
                        elem_id="upload-limits",
                    )
                    preview = gr.Video(label="Preview", interactive=False, height=300, elem_id="video-preview")
                    gif_preview = gr.Image(
                        label="Preview", interactive=False, type="filepath", visible=False, height=300
                    )
                    clip_facts = gr.Markdown(elem_id="clip-facts")
                    if examples:
                        gr.Examples(
                            examples=[[str(p)] for p in examples],
                            inputs=[video],
                            label="Examples",
                            example_labels=[p.stem.replace("_", " ") for p in examples],
                        )
                with gr.Column(scale=3, min_width=420):
                    strip = gr.Image(
                        label="Frames the model sees",
                        type="numpy",
                        format="png",
                        interactive=False,
                        elem_id="frame-strip",
                        buttons=["fullscreen"],
                    )
                    with gr.Group():
                        describe_button = gr.Button("Describe", variant="primary", elem_id="describe-button")
                        caption_box = gr.Textbox(label="Description", lines=2, interactive=False, elem_id="caption")
                    with gr.Accordion("Settings", open=True):
                        with gr.Row():
                            frames = gr.Slider(
                                1, limits.max_frames, value=service.default_frames, step=1, label="Frames sampled"
                            )
                            max_new_tokens = gr.Slider(
                                1,
                                limits.max_new_tokens,
                                value=min(DEFAULT_MAX_NEW_TOKENS, limits.max_new_tokens),
                                step=1,
                                label="Max new tokens",
                            )
                        with gr.Row():
                            temperature = gr.Slider(
                                0, 2, value=0, step=0.05, label="Temperature (0: greedy)", elem_id="temperature"
                            )
                            top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p (sampling)")
                            repetition_penalty = gr.Slider(1, 2, value=1, step=0.05, label="Repetition penalty")
            with gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=380):
                    gr.Markdown("### Chat about the clip")
                    chatbot = gr.Chatbot(label="Chat", height=320, elem_id="chat")
                    with gr.Row():
                        message = gr.Textbox(
                            label="Message",
                            placeholder="Ask anything about the clip ...",
                            show_label=False,
                            scale=4,
                            elem_id="chat-message",
                        )
                        send_button = gr.Button("Send", scale=1, variant="primary")
                    clear_button = gr.Button("Clear chat", size="sm")
                with gr.Column(scale=1, min_width=380):
                    gr.Markdown("### Question answering")
                    question = gr.Textbox(
                        label="Question", placeholder="what is the person doing?", elem_id="qa-question"
                    )
                    vocabulary = gr.Radio([OPEN, CLOSED], value=CLOSED, label="Answers")
                    with gr.Row():
                        preset = gr.Dropdown(
                            [NO_PRESET, *CANDIDATE_PRESETS], value=NO_PRESET, label="Candidate preset", scale=1
                        )
                        candidates = gr.Textbox(
                            label="Candidate answers (comma-separated or one per line)",
                            value="",
                            lines=2,
                            scale=3,
                            elem_id="qa-candidates",
                        )
                    stash = gr.State("")
                    ask_button = gr.Button("Ask", variant="primary", elem_id="ask-button")
                    answer = gr.Textbox(label="Answer", interactive=False, elem_id="qa-answer")
                    chart = gr.BarPlot(
                        x="answer",
                        y="probability",
                        y_lim=[0, 1],
                        sort="-y",
                        height=280,
                        label=f"Top {TOP_CANDIDATES_SHOWN} candidates",
                        elem_id="qa-chart",
                    )
                    with gr.Accordion("All candidate probabilities (JSON)", open=False):
                        probabilities = gr.JSON(label="Candidate probabilities", elem_id="qa-probabilities")
            with gr.Accordion("Zero-shot labels (video-text model)", open=True, visible=search is not None):
                with gr.Row():
                    label_box = gr.Textbox(
                        label="Labels (comma-separated or one per line)",
                        value=", ".join(ANSWER_VOCABULARY["colour"]),
                        scale=4,
                        elem_id="zero-shot-labels",
                    )
                    labels_button = gr.Button("Label the clip", scale=1, elem_id="zero-shot-button")
                label_output = gr.Label(label="Label probabilities", num_top_classes=5, elem_id="zero-shot-output")
            with gr.Accordion("Long video", open=True, elem_id="long-video"):
                gr.Markdown(long_video_text(long_videos), elem_id="long-video-info")
                long_facts = gr.Markdown(elem_id="long-video-facts")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1, min_width=380):
                        timeline_button = gr.Button("Timeline", variant="primary", elem_id="timeline-button")
                        timeline_table = gr.Dataframe(
                            headers=["time", "caption"],
                            interactive=False,
                            wrap=True,
                            label="Timeline (select a row to see its frames)",
                            elem_id="timeline-table",
                        )
                        with gr.Accordion("Timeline (JSON)", open=False):
                            timeline_json = gr.JSON(label="Timeline", elem_id="timeline-json")
                    with gr.Column(scale=1, min_width=380):
                        with gr.Row():
                            find_text = gr.Textbox(
                                label="Find in this video",
                                placeholder="a red star moving left",
                                scale=4,
                                elem_id="find-text",
                            )
                            find_count = gr.Slider(1, MAX_FIND_RESULTS, value=5, step=1, label="Results", scale=1)
                        find_button = gr.Button("Find", variant="primary", elem_id="find-button")
                        find_table = gr.Dataframe(
                            headers=["time", "score"],
                            interactive=False,
                            label="Moments, best first (select a row to see its frames)",
                            elem_id="find-results",
                        )
                        with gr.Accordion("Moments (JSON)", open=False):
                            find_json = gr.JSON(label="Moments", elem_id="find-json")
                timeline_spans, find_spans = gr.State([]), gr.State([])
                moment_strip = gr.Image(
                    label="Frames of the selected moment",
                    type="numpy",
                    format="png",
                    interactive=False,
                    elem_id="moment-strip",
                )
                moment_facts = gr.Markdown(elem_id="moment-facts")
        with gr.Tab("Search", elem_id="search-tab"):
            if search is not None and search.can_search:
                gr.Markdown(
                    f"Search the {len(search.index)} clips of the folder this app was started with by text "
                    "(the video-text model's cosine similarity; best first).",
                    elem_id="search-info",
                )
            else:
                gr.Markdown(
                    "No clips to search: start the app with `--search-dir FOLDER` (and a video-text model).",
                    elem_id="search-info",
                )
            with gr.Row():
                search_query = gr.Textbox(
                    label="Find clips showing ...",
                    placeholder="a red star moving left",
                    scale=4,
                    elem_id="search-query",
                )
                search_count = gr.Slider(1, MAX_RESULTS, value=8, step=1, label="Results", scale=1)
                search_button = gr.Button("Search", variant="primary", scale=1, elem_id="search-button")
            search_gallery = gr.Gallery(
                label="Matching clips", columns=4, height="auto", elem_id="search-results", interactive=False
            )
            with gr.Accordion("Scores (JSON)", open=False):
                search_scores = gr.JSON(label="Results", elem_id="search-scores")
        with gr.Accordion("Loaded model", open=True):
            gr.Markdown(model_markdown(service), elem_id="model-info")

        # --------------------------------------------------------------- events

        private = {"api_visibility": "private"}
        model_event = {"concurrency_id": MODEL_QUEUE, "concurrency_limit": limits.concurrency}
        clip_outputs = [
            preview,
            gif_preview,
            strip,
            clip_facts,
            caption_box,
            answer,
            probabilities,
            chart,
            chatbot,
            label_output,
        ]
        video.change(show_video, [video, frames], clip_outputs, **model_event, **private)
        frames.release(update_strip, [video, frames], [strip, clip_facts], **model_event, **private)

        generation = [temperature, top_p, repetition_penalty]
        describe_button.click(
            caption, [video, frames, max_new_tokens, *generation], caption_box, api_name="caption", **model_event
        )

        gr.on(
            [ask_button.click, question.submit],
            require_candidates,
            [vocabulary, candidates],
            None,
            queue=False,
            **private,
        ).success(
            ask,
            [video, question, candidates, frames, max_new_tokens, *generation],
            [answer, probabilities],
            api_name="ask",
            **model_event,
        ).success(_chart_data, probabilities, chart, queue=False, **private)
        vocabulary.change(
            switch_vocabulary, [vocabulary, candidates, stash], [candidates, preset, stash], queue=False, **private
        )
        preset.change(use_preset, [preset, candidates], candidates, queue=False, **private)

        gr.on(
            [send_button.click, message.submit],
            chat,
            [video, message, chatbot, frames, max_new_tokens, *generation],
            [chatbot, message],
            api_name="chat",
            **model_event,
        )
        clear_button.click(lambda: ([], ""), None, [chatbot, message], queue=False, **private)

        long_outputs = [timeline_json, timeline_table, timeline_spans, find_json, find_table, find_spans]
        video.change(new_long_video, video, [*long_outputs, moment_strip, moment_facts, long_facts], **private)
        timeline_button.click(timeline, video, timeline_json, api_name="timeline", **model_event).success(
            lambda items: _span_rows(items, "caption"), timeline_json, [timeline_table, timeline_spans], **private
        )
        gr.on(
            [find_button.click, find_text.submit],
            find,
            [video, find_text, find_count],
            find_json,
            api_name="find",
            **model_event,
        ).success(lambda items: _span_rows(items, "score"), find_json, [find_table, find_spans], **private)
        moment_event = {**model_event, **private}
        timeline_table.select(
            show_moment, [video, timeline_spans, frames], [moment_strip, moment_facts], **moment_event
        )
        find_table.select(show_moment, [video, find_spans, frames], [moment_strip, moment_facts], **moment_event)

        search_event = {"concurrency_id": SEARCH_QUEUE, "concurrency_limit": limits.concurrency}
        labels_button.click(labels, [video, label_box], label_output, api_name="labels", **search_event)
        gr.on(
            [search_button.click, search_query.submit],
            find_clips,
            [search_query, search_count],
            [search_gallery, search_scores],
            api_name="search",
            **search_event,
        )
    return demo


def launch_app(
    service: ModelService,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    share: bool = False,
    examples: Sequence[str | os.PathLike] | None = None,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
    auth: Sequence[tuple[str, str]] | None = None,
    search: SearchService | None = None,
    long_videos: LongVideoService | None = None,
    openai_api: ServerConfig | None = None,
) -> gr.Blocks:
    """Build the page, bound its queue (``service.limits``: concurrency and size) and serve it.

    Only uploads and the example clips are served from disk (``allowed_paths`` = the examples);
    :class:`apps.request_guard.RequestGuard` refuses routes the page does not use, remote URLs as
    files, oversized bodies and uploads of more than one file, and Gradio's URL download is switched
    off; refused and abandoned uploads are swept (:class:`apps.uploads.AbandonedUploadSweeper`).
    auth: (user, password) pairs required to use the page and API (None: open to whoever reaches the
    address). search: the video-text side (zero-shot labels, and
    the Search tab over its folder, which is then served too). long_videos: how uploads longer than one
    window are read (default: :func:`build_app`'s). openai_api: also serve the OpenAI-compatible API
    (:mod:`apps.openai_server`) at ``/v1`` in this process, on the same model service and its one batcher
    (its own keys; Gradio's login does not cover it)."""
    from gradio.utils import get_upload_folder
    from starlette.middleware import Middleware

    from apps.request_guard import RequestGuard
    from apps.uploads import AbandonedUploadSweeper

    _refuse_url_downloads()

    examples = [Path(p).resolve() for p in (default_examples() if examples is None else examples)]
    demo = build_app(service, examples, search, long_videos)
    served = [str(p) for p in examples]
    if search is not None and search.search_dir is not None:
        served.append(str(search.search_dir))
    demo.queue(default_concurrency_limit=service.limits.concurrency, max_size=service.limits.queue_size)
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        prevent_thread_lock=True,  # the API is mounted first; then the thread is blocked if asked
        quiet=quiet,
        max_file_size=service.limits.max_upload_bytes,
        allowed_paths=served,
        auth=list(auth) if auth else None,
        app_kwargs={
            "middleware": [
                Middleware(
                    RequestGuard,
                    max_upload_bytes=service.limits.max_upload_bytes,
                    max_files=1,
                    api_prefix="/v1" if openai_api is not None else None,
                )
            ]
        },
        footer_links=["api"],
        ssr_mode=False,
        mcp_server=False,
        enable_monitoring=False,
        theme=gr.themes.Soft(),
    )
    demo.upload_sweeper = AbandonedUploadSweeper(get_upload_folder()).start()
    if openai_api is not None:
        from apps.openai_server import build_openai_app

        demo.app.mount("/v1", build_openai_app(service, openai_api, prefix=""))
    if not prevent_thread_lock:
        demo.block_thread()
    return demo


def _refuse_url_downloads() -> None:
    """Gradio downloads a file input given as a URL; the request guard refuses such requests, and
    this is the second layer: the download function itself refuses (Gradio has no setting for it)."""
    import gradio.processing_utils as processing

    async def refused(url: str, cache_dir: str) -> str:
        raise gr.Error("This app takes uploaded files only, not URLs.")

    processing.async_ssrf_protected_download = refused
