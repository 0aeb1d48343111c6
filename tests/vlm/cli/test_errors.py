"""What ``prism-vlm`` does with an exception: a user error (PrismVlmError, a path the user named that
is missing or unreadable, argparse's usage errors, Ctrl-C) is one line and a non-zero exit code;
anything else is a bug and propagates with its traceback. And one meaning per flag name: ``--encoder``
(VideoPrism encoder), ``--video-text-model`` (video-text model), ``--model`` (glue), the old
spellings kept as aliases."""

import json

import numpy as np
import pytest
import torch

import encoder.video.clips
from encoder.common.errors import ConfigError, PrismVlmError, UsageError
from tests.helpers.fixture_files import REFERENCE_DIR, TEST_SPM_MODEL
from tests.helpers.video_factory import write_video
from vlm.cli.main import build_parser, main
from vlm.retrieval.evaluation import RetrievalManifestError
from vlm.retrieval.zero_shot import TextListError, check_labels

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LVT_NPZ = REFERENCE_DIR / "lvt_tiny_params.npz"


def _features(tmp_path, *flags: str) -> list[str]:
    return [
        "features",
        "--encoder",
        str(tmp_path / "no-encoder"),
        "--videos",
        str(tmp_path),
        "--out",
        str(tmp_path / "cache"),
        *flags,
    ]


def _raise(error: BaseException):
    def fail(*args, **kwargs):
        raise error

    return fail


# ----------------------------------------------------------------------------------------- user errors


def test_a_user_error_is_one_line_and_exit_code_2(tmp_path, capsys):
    """A real one: a folder without videos (encoder.video.clips.ClipListError), before any model loads."""
    assert main(_features(tmp_path)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("prism-vlm features: error: ") and "no video files" in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err


@pytest.mark.parametrize(
    "error",
    [UsageError("--foo needs --bar"), ConfigError("run.json: not valid JSON"), PrismVlmError("a plain PrismVlmError")],
)
def test_a_prism_vlm_error_raised_inside_a_command_is_one_line(tmp_path, capsys, monkeypatch, error):
    monkeypatch.setattr(encoder.video.clips, "list_videos", _raise(error))
    assert main(_features(tmp_path)) == 2
    assert capsys.readouterr().err == f"prism-vlm features: error: {error}\n"


@pytest.mark.parametrize(
    "error",
    [
        FileNotFoundError(2, "No such file or directory", "clips.jsonl"),
        IsADirectoryError(21, "Is a directory", "out.jsonl"),
        NotADirectoryError(20, "Not a directory", "file/sub"),
        PermissionError(13, "Permission denied", "cache/locked"),
    ],
)
def test_a_path_the_user_named_is_one_line(tmp_path, capsys, monkeypatch, error):
    monkeypatch.setattr(encoder.video.clips, "list_videos", _raise(error))
    assert main(_features(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("prism-vlm features: error: ") and error.filename in err and err.count("\n") == 1


def test_ctrl_c_exits_130_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(encoder.video.clips, "list_videos", _raise(KeyboardInterrupt()))
    assert main(_features(tmp_path)) == 130
    assert capsys.readouterr().err == "prism-vlm features: interrupted\n"


def test_usage_errors_exit_2_with_the_usage_line(capsys):
    with pytest.raises(SystemExit) as refused:
        main(["features", "--videos", "clips/", "--out", "cache/"])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and err.startswith("usage: prism-vlm features") and "--encoder" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["search", "--json"], "give INDEX and one or more text queries"),
        (["search", "--video", "clip.mp4"], "--video needs --texts FILE"),
        (["caption", "--out", "captions.jsonl"], "nothing to caption"),
        (["chat", "clip.mp4", "--json"], "--json needs --message"),
        (["eval-qa", "--data", "qa.jsonl", "--mode", "open", "--candidates-file", "answers.txt"], None),
        (["app", "--auth", "nopassword"], "expected USER:PASSWORD"),
    ],
)
def test_flag_combinations_are_usage_errors(tmp_path, capsys, monkeypatch, argv, message):
    """Flags that do not fit together are UsageErrors (one line), raised before any model loads."""
    if argv[0] == "eval-qa":
        (tmp_path / "qa.jsonl").write_text(json.dumps({"video": "v.mp4", "question": "what?", "answer": "dog"}) + "\n")
        (tmp_path / "answers.txt").write_text("dog\ncat\n")
        monkeypatch.chdir(tmp_path)
        message = "apply to --mode closed"
    if argv[0] == "app":
        pytest.importorskip("gradio")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"prism-vlm {argv[0]}: error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["ask", "c.mp4", "what?", "--top-p", "1.5"], "--top-p"),
        (["caption", "c.mp4", "--temperature", "101"], "--temperature"),
        (["chat", "c.mp4", "--repetition-penalty", "11"], "--repetition-penalty"),
        (["app", "--batch-window-ms", "20000"], "--batch-window-ms"),
        (["app", "--max-batch", "2000"], "--max-batch"),
        (["eval-qa", "--data", "d", "--mode", "closed", "--num-shots", "-1"], "--num-shots"),
        (["eval-qa", "--data", "d", "--mode", "closed", "--k", "0"], "--k"),
        (["make-shapes", "out", "--num", "0"], "--num"),
        (["make-shapes", "out", "--num", "2", "--workers", "0"], "--workers"),
        (["make-shapes", "out", "--num", "2", "--captions", "7"], "--captions"),
    ],
)
def test_values_the_library_refuses_are_refused_by_argparse(capsys, argv, flag):
    """Values the library would refuse with a plain ValueError (a traceback now) are usage errors."""
    with pytest.raises(SystemExit) as refused:
        main(argv)
    assert refused.value.code == 2 and f"argument {flag}" in capsys.readouterr().err


def test_make_shapes_flags_that_do_not_fit_together_are_one_line(tmp_path, capsys):
    assert (
        main(
            [
                "make-shapes",
                str(tmp_path / "c"),
                "--num",
                "2",
                "--val-fraction",
                "0.7",
                "--test-fraction",
                "0.7",
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "val_fraction + test_fraction must be <= 1" in err and err.count("\n") == 1
    assert not (tmp_path / "c").exists()
    with pytest.raises(SystemExit) as refused:  # a single flag out of range: argparse's usage error
        main(["make-shapes", str(tmp_path / "c"), "--num", "2", "--val-fraction", "1.5"])
    assert refused.value.code == 2 and "--val-fraction" in capsys.readouterr().err


def test_retrieval_input_errors_are_prism_vlm_errors_and_keep_value_error(tmp_path):
    for labels in ([], ["a", "a"], ["a", " "]):
        with pytest.raises(TextListError):
            check_labels(labels)
    assert issubclass(TextListError, ValueError) and issubclass(RetrievalManifestError, ValueError)
    assert issubclass(RetrievalManifestError, PrismVlmError)
    from encoder.videoprism.pretrain.data import ManifestError

    assert RetrievalManifestError is not ManifestError and RetrievalManifestError.__name__ != ManifestError.__name__


# ----------------------------------------------------------------------------------------- bugs


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("boom"),
        ValueError("a bug's ValueError"),
        TypeError("bad call"),
        KeyError("missing"),
        ImportError("a bug's ImportError"),
    ],
)
def test_a_bug_propagates_with_its_traceback(tmp_path, capsys, monkeypatch, error):
    monkeypatch.setattr(encoder.video.clips, "list_videos", _raise(error))
    with pytest.raises(type(error)) as raised:
        main(_features(tmp_path))
    assert raised.value is error and not isinstance(raised.value, PrismVlmError)
    assert raised.traceback[-1].name == "fail"  # raised where it happened, not re-raised by main
    assert "error:" not in capsys.readouterr().err


def test_a_bug_in_a_retrieval_command_propagates(tmp_path, monkeypatch):
    import vlm.retrieval.video_text_model

    (tmp_path / "a.mp4").write_bytes(b"")
    monkeypatch.setattr(vlm.retrieval.video_text_model, "load_video_text_model", _raise(ValueError("not user input")))
    with pytest.raises(ValueError, match="not user input"):
        main(["index", str(tmp_path), "--out", str(tmp_path / "index"), "--video-text-model", "x.npz"])


# ----------------------------------------------------------------------------------------- flag names


@pytest.mark.parametrize(
    "argv, old, new",
    [
        (["features", "--videos", "v", "--out", "o"], "--model", "--encoder"),
        (["index", "src", "--out", "o"], "--model", "--video-text-model"),
        (["search", "ix", "a query"], "--model", "--video-text-model"),
        (["classify", "c.mp4", "--labels", "a,b"], "--model", "--video-text-model"),
        (["eval-retrieval", "--data", "d"], "--model", "--video-text-model"),
        (["eval-zeroshot", "--data", "d"], "--model", "--video-text-model"),
    ],
)
def test_old_flag_spellings_parse_to_the_same_dest(argv, old, new):
    parser = build_parser()
    old_args, new_args = vars(parser.parse_args([*argv, old, "SRC"])), vars(parser.parse_args([*argv, new, "SRC"]))
    assert old_args == new_args
    assert old_args[new.lstrip("-").replace("-", "_")] == "SRC" and "model" not in old_args


@pytest.mark.parametrize(
    "argv",
    [
        ["caption", "c.mp4"],
        ["ask", "c.mp4", "what?"],
        ["chat", "c.mp4"],
        ["eval-qa", "--data", "d", "--mode", "open"],
        ["app"],
    ],
)
def test_model_is_the_glue_in_caption_ask_chat_eval_qa_and_app(argv):
    args = build_parser().parse_args([*argv, "--model", "GLUE"])
    assert args.model == "GLUE" and not hasattr(args, "encoder") and getattr(args, "video_text_model", None) is None


def test_help_shows_the_new_names_first(capsys):
    for command, new in (("features", "--encoder SRC, --model SRC"), ("search", "--video-text-model SRC, --model SRC")):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert new in text and "deprecated" in text


def test_features_old_and_new_flags_give_the_same_cache(tmp_path, capsys):
    from transformers import VideoPrismVisionConfig, VideoPrismVisionModel

    from encoder.videoprism.features import FeatureCache

    torch.manual_seed(0)
    config = VideoPrismVisionConfig(
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        num_spatial_layers=1,
        num_temporal_layers=1,
        image_size=36,
        num_frames=2,
    )
    VideoPrismVisionModel(config).save_pretrained(tmp_path / "encoder")
    _write_clips(tmp_path / "clips", 2)
    caches = {}
    for flag in ("--model", "--encoder"):
        out = tmp_path / flag.strip("-")
        assert (
            main(
                [
                    "features",
                    flag,
                    str(tmp_path / "encoder"),
                    "--videos",
                    str(tmp_path / "clips"),
                    "--out",
                    str(out),
                    "--frames",
                    "2",
                    "--size",
                    "36",
                    "--workers",
                    "0",
                    "--no-progress",
                ]
            )
            == 0
        )
        assert json.loads(capsys.readouterr().out)["encoded"] == 2
        caches[flag] = FeatureCache(out)
    assert caches["--model"].videos == caches["--encoder"].videos
    for video in caches["--model"].videos:
        torch.testing.assert_close(caches["--model"].get(video), caches["--encoder"].get(video), atol=0, rtol=0)


def test_index_and_search_old_and_new_flags_give_the_same_results(tmp_path, capsys):
    _write_clips(tmp_path / "clips", 3)
    results = {}
    for flag in ("--model", "--video-text-model"):
        model = [flag, str(LVT_NPZ), "--tokenizer", str(TEST_SPM_MODEL), "--device", "cpu"]
        index = tmp_path / flag.strip("-")
        assert (
            main(
                [
                    "index",
                    str(tmp_path / "clips"),
                    "--out",
                    str(index),
                    "--workers",
                    "0",
                    "--no-progress",
                    "--frames",
                    "2",
                    *model,
                ]
            )
            == 0
        )
        assert json.loads(capsys.readouterr().out)["encoded"] == 3
        assert main(["search", str(index), "a red square", "--top", "3", "--json", *model]) == 0
        results[flag] = json.loads(capsys.readouterr().out)["results"]
    old, new = results["--model"], results["--video-text-model"]
    assert [r["video"] for r in old] == [r["video"] for r in new]
    assert [r["score"] for r in old] == pytest.approx([r["score"] for r in new], abs=1e-6)


def _write_clips(folder, count: int) -> None:
    folder.mkdir(parents=True)
    for number, rgb in enumerate([(220, 30, 30), (30, 200, 40), (40, 50, 220)][:count]):
        frames = []
        for t in range(2):
            frame = np.full((48, 48, 3), 20, np.uint8)
            frame[10:30, 4 + 6 * t : 24 + 6 * t] = rgb
            frames.append(frame)
        write_video(folder / f"clip{number}.mp4", frames)
