"""Annotation converters: small files in each public format and layout become manifests that
eval-qa, caption --videos and eval-caption read back, with video paths resolving to the layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from encoder.video.clips import list_clips
from vlm.cli import main as cli
from vlm.convert.annotations import AnnotationFormatError, convert_annotations
from vlm.evaluation.data import read_caption_references, read_qa

pytestmark = pytest.mark.quick


def write_json(path: Path, value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_msrvtt_qa(tmp_path):
    src, out = tmp_path / "MSRVTT-QA", tmp_path / "out"
    write_json(
        src / "train_qa.json",
        [
            {"answer": "clothes", "category_id": 0, "id": 0, "question": "what is a man showing?", "video_id": 0},
            {"answer": "man", "category_id": 1, "id": 1, "question": "who shows clothes?", "video_id": 0},
        ],
    )
    write_json(
        src / "test_qa.json",
        [{"answer": "two", "category_id": 2, "id": 9, "question": "how many dogs run?", "video_id": 7010}],
    )
    written = convert_annotations("msrvtt-qa", src, out)
    assert written == {
        str(out / "train.jsonl"): 2,
        str(out / "train_videos.jsonl"): 1,
        str(out / "test.jsonl"): 1,
        str(out / "test_videos.jsonl"): 1,
    }
    assert read_lines(out / "test.jsonl") == [
        {
            "video": "../MSRVTT-QA/video/video7010.mp4",
            "question": "how many dogs run?",
            "answer": "two",
            "type": "how",
            "question_id": "9",
        }
    ]
    train = read_qa(out / "train.jsonl")
    assert [e.video for e in train] == [str(out / "../MSRVTT-QA/video/video0.mp4")] * 2
    assert Path(train[0].video).resolve() == (src / "video" / "video0.mp4").resolve()
    assert [e.question_type for e in train] == ["what", "who"]
    assert [c.source for c in list_clips(out / "train_videos.jsonl")] == [train[0].video]


def test_msvd_qa_with_renamed_videos_or_youtube_names(tmp_path):
    src = tmp_path / "MSVD-QA"
    write_json(
        src / "val_qa.json", [{"answer": "animal", "id": 0, "question": "what is chewing on a nut?", "video_id": 1}]
    )
    convert_annotations("msvd-qa", src, tmp_path / "a")
    assert read_lines(tmp_path / "a" / "val.jsonl")[0]["video"] == "../MSVD-QA/video/vid1.avi"
    (src / "YouTubeClips").mkdir()
    (src / "youtube_mapping.txt").write_text("-4wsuPCjDBc_5_15 vid1\n")
    convert_annotations("msvd-qa", src, tmp_path / "b")
    assert read_lines(tmp_path / "b" / "val.jsonl")[0]["video"] == "../MSVD-QA/YouTubeClips/-4wsuPCjDBc_5_15.avi"


def test_nextqa_open_ended(tmp_path):
    src = tmp_path / "nextqa"
    src.mkdir()
    (src / "test.csv").write_text(
        "video,frame_count,width,height,question,answer,qid,type\n"
        "3233088823,462,640,480,how is the bulldozer controlled,from the drivers cabin,3,CH\n"
        "8177965766,705,640,360,how does the man react to the performance,smile,6,TP\n"
        "8783897632,974,640,360,how many people are filmed,two,9,DC\n"
    )
    write_json(
        src / "map_vid_vidorID.json",
        {"3233088823": "1025/3233088823", "8177965766": "0001/8177965766", "8783897632": "1200/8783897632"},
    )
    write_json(src / "add_reference_answer_test.json", {"8177965766": {"6": "smiling"}})
    convert_annotations("nextqa", src, tmp_path / "out")
    rows = read_lines(tmp_path / "out" / "test.jsonl")
    assert [r["type"] for r in rows] == ["CH", "TN", "DC"]  # TP merged into TN as the official evaluation does
    assert rows[0]["video"] == "../nextqa/NExTVideo/1025/3233088823.mp4" and rows[0]["question_id"] == "3233088823_3"
    assert rows[1]["answers"] == ["smiling"] and "answers" not in rows[0]
    assert read_qa(tmp_path / "out" / "test.jsonl")[1].answers == ("smile", "smiling")
    (src / "test.csv").write_text("video,question,answer,qid,type\n999,q,a,0,CW\n")
    with pytest.raises(AnnotationFormatError, match="video 999 is not in map_vid_vidorID.json"):
        convert_annotations("nextqa", src, tmp_path / "out")


def test_msrvtt_captions(tmp_path):
    src = tmp_path / "msrvtt"
    write_json(
        src / "train_val_videodatainfo.json",
        {
            "videos": [
                {"video_id": "video0", "split": "train", "id": 0},
                {"video_id": "video6600", "split": "validate", "id": 6600},
            ],
            "sentences": [
                {"caption": "a man is talking", "video_id": "video0", "sen_id": 0},
                {"caption": "a car drives", "video_id": "video6600", "sen_id": 1},
                {"caption": "someone talks", "video_id": "video0", "sen_id": 2},
            ],
        },
    )
    write_json(
        src / "test_videodatainfo.json",
        {
            "videos": [{"video_id": "video7010", "split": "test", "id": 7010}],
            "sentences": [{"caption": "a dog runs", "video_id": "video7010", "sen_id": 3}],
        },
    )
    out = tmp_path / "out"
    written = convert_annotations("msrvtt", src, out)
    assert sorted(Path(p).name for p in written) == sorted(
        f"{s}_{kind}.jsonl" for s in ("train", "val", "test") for kind in ("videos", "refs")
    )
    assert read_caption_references(out / "train_refs.jsonl") == {"video0": ["a man is talking", "someone talks"]}
    clips = list_clips(out / "test_videos.jsonl")
    assert [c.id for c in clips] == ["video7010"]
    assert Path(clips[0].source).resolve() == (src / "TestVideo" / "video7010.mp4").resolve()
    assert read_lines(out / "val_videos.jsonl") == [
        {"video": "../msrvtt/TrainValVideo/video6600.mp4", "id": "video6600"}
    ]


def test_vatex_captions(tmp_path):
    src = tmp_path / "vatex"
    write_json(
        src / "vatex_public_test_english_v1.1.json",
        [
            {"videoID": "Ptf_2VRj-V0_000122_000132", "enCap": ["a person plays", "someone is playing"]},
            {"videoID": "no_captions_000001_000011", "enCap": []},
        ],
    )
    write_json(src / "vatex_training_v1.0.json", [{"videoID": "abc_000000_000010", "enCap": ["x"], "chCap": ["y"]}])
    convert_annotations("vatex", src, tmp_path / "out")
    assert read_caption_references(tmp_path / "out" / "test_refs.jsonl") == {
        "Ptf_2VRj-V0_000122_000132": ["a person plays", "someone is playing"]
    }
    assert [c.id for c in list_clips(tmp_path / "out" / "test_videos.jsonl")] == ["Ptf_2VRj-V0_000122_000132"]
    assert read_lines(tmp_path / "out" / "train_videos.jsonl")[0]["video"] == "../vatex/videos/abc_000000_000010.mp4"


def test_youcook2_segments(tmp_path):
    src = tmp_path / "YouCookII"
    write_json(
        src / "youcookii_annotations_trainval.json",
        {
            "database": {
                "GLd3aX16zBg": {
                    "duration": 241.62,
                    "subset": "validation",
                    "recipe_type": "113",
                    "annotations": [
                        {"segment": [90, 102], "id": 0, "sentence": "spread margarine on two slices of white bread"},
                        {"segment": [114, 127], "id": 1, "sentence": "place a slice of cheese on the bread"},
                    ],
                },
                "xHr8X2Wpmno": {
                    "duration": 100.0,
                    "subset": "training",
                    "recipe_type": "101",
                    "annotations": [{"segment": [5, 9], "id": 0, "sentence": "cut the onion"}],
                },
            }
        },
    )
    (src / "raw_videos" / "validation" / "113").mkdir(parents=True)
    (src / "raw_videos" / "validation" / "113" / "GLd3aX16zBg.mkv").write_bytes(b"")
    convert_annotations("youcook2", src, tmp_path / "out")
    clips = list_clips(tmp_path / "out" / "val_videos.jsonl")
    assert [(c.id, c.start, c.end) for c in clips] == [("GLd3aX16zBg_0", 90.0, 102.0), ("GLd3aX16zBg_1", 114.0, 127.0)]
    assert clips[0].source.endswith("raw_videos/validation/113/GLd3aX16zBg.mkv")  # the extension found on disk
    assert read_caption_references(tmp_path / "out" / "val_refs.jsonl")["GLd3aX16zBg_1"] == [
        "place a slice of cheese on the bread"
    ]
    assert read_lines(tmp_path / "out" / "train_videos.jsonl")[0]["video"].endswith(
        "raw_videos/training/101/xHr8X2Wpmno.mp4"
    )


def test_errors_and_cli(tmp_path, capsys):
    src = tmp_path / "empty"
    src.mkdir()
    with pytest.raises(AnnotationFormatError, match="no train_qa.json, val_qa.json, test_qa.json"):
        convert_annotations("msrvtt-qa", src, tmp_path / "out")
    with pytest.raises(AnnotationFormatError, match="NExT-QA video map not found"):
        convert_annotations("nextqa", src, tmp_path / "out")
    (src / "test_qa.json").write_text("[{broken")
    with pytest.raises(AnnotationFormatError, match="test_qa.json: not valid JSON"):
        convert_annotations("msrvtt-qa", src, tmp_path / "out")
    write_json(src / "test_qa.json", [{"answer": "a", "id": 0, "video_id": 1}])
    with pytest.raises(AnnotationFormatError, match="entry 0 has no 'question' field"):
        convert_annotations("msrvtt-qa", src, tmp_path / "out")
    with pytest.raises(ValueError, match="unknown annotation format"):
        convert_annotations("kinetics", src, tmp_path / "out")

    write_json(src / "test_qa.json", [{"answer": "a", "id": 0, "question": "what?", "video_id": 1}])
    assert cli.main(["convert-annotations", "msrvtt-qa", str(src), str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{tmp_path / 'out' / 'test.jsonl'}\t1",
        f"{tmp_path / 'out' / 'test_videos.jsonl'}\t1",
    ]
    assert cli.main(["convert-annotations", "nextqa", str(src), str(tmp_path / "out")]) == 2
    assert "NExT-QA video map not found" in capsys.readouterr().err


def test_videochatgpt_and_llava_video_conversations_load_as_training_data(tmp_path):
    from vlm.training import DataSource
    from vlm.training.data import load_examples

    src = tmp_path / "videochatgpt"
    (src / "videos").mkdir(parents=True)
    (src / "videos" / "v_abc.mkv").write_bytes(b"x")
    (src / "VideoInstruct100K.json").write_text(
        json.dumps(
            [
                {"video_id": "v_abc", "q": "What is the man doing?", "a": "He is playing drums. "},
                {"video_id": "v_missing", "q": "Where is it?", "a": "In a garage."},
            ]
        )
    )
    written = convert_annotations("videochatgpt", src, tmp_path / "out1")
    rows = [json.loads(line) for line in (tmp_path / "out1" / "train_conversations.jsonl").read_text().splitlines()]
    assert list(written.values()) == [2]
    assert rows[0] == {
        "video": "../videochatgpt/videos/v_abc.mkv",
        "id": "v_abc_0",
        "conversations": [
            {"from": "human", "value": "<video>\nWhat is the man doing?"},
            {"from": "gpt", "value": "He is playing drums."},
        ],
    }
    loaded = load_examples(DataSource(str(tmp_path / "out1" / "train_conversations.jsonl")))
    assert (
        loaded.task == "chat" and len(loaded.examples) == 1 and loaded.report()["skipped_by_reason"] == {"missing": 1}
    )

    src = tmp_path / "llava_video"
    subset = src / "0_30_s_academic_v0_1"
    (subset / "academic_source" / "ego").mkdir(parents=True)
    (subset / "academic_source" / "ego" / "a.mp4").write_bytes(b"x")
    turns = [
        {"from": "human", "value": "<image>\nDescribe the video."},
        {"from": "gpt", "value": "A kitchen."},
        {"from": "human", "value": "What is cut?"},
        {"from": "gpt", "value": "Onions."},
    ]
    (subset / "0_30_s_academic_v0_1_cap_processed.json").write_text(
        json.dumps(
            [
                {
                    "id": "ego_1",
                    "data_source": "0_30_s_academic_v0_1",
                    "video": "academic_source/ego/a.mp4",
                    "conversations": turns,
                }
            ]
        )
    )
    (src / "meta.json").write_text(json.dumps({"version": 1}))  # not a conversation list: ignored
    convert_annotations("llava-video", src, tmp_path / "out2")
    rows = [json.loads(line) for line in (tmp_path / "out2" / "train_conversations.jsonl").read_text().splitlines()]
    assert rows == [
        {
            "video": "../llava_video/0_30_s_academic_v0_1/academic_source/ego/a.mp4",
            "id": "ego_1",
            "conversations": turns,
            "source_file": "0_30_s_academic_v0_1/0_30_s_academic_v0_1_cap_processed.json",
            "data_source": "0_30_s_academic_v0_1",
        }
    ]
    loaded = load_examples(DataSource(str(tmp_path / "out2" / "train_conversations.jsonl")))
    assert loaded.examples[0].messages == (
        ("user", "Describe the video."),
        ("assistant", "A kitchen."),
        ("user", "What is cut?"),
        ("assistant", "Onions."),
    )
    with pytest.raises(AnnotationFormatError, match="no JSON list of conversations"):
        convert_annotations("llava-video", tmp_path / "out1", tmp_path / "out3")
    with pytest.raises(AnnotationFormatError, match="VideoChatGPT-100K annotations not found"):
        convert_annotations("videochatgpt", tmp_path / "out2", tmp_path / "out3")


def test_msrvtt_1k_and_kinetics400_feed_the_retrieval_evaluations(tmp_path):
    from vlm.retrieval.evaluation import read_captioned_clips, read_labelled_clips

    msrvtt = tmp_path / "msrvtt"
    (msrvtt / "videos" / "all").mkdir(parents=True)
    (msrvtt / "videos" / "all" / "video9770.mp4").write_bytes(b"x")
    (msrvtt / "MSRVTT_JSFUSION_test.csv").write_text(
        ",key,vid_key,video_id,sentence\n0,ret0,msr9770,video9770,a person is connecting something to system\n"
        "1,ret1,msr7606,video7606,a little girl does gymnastics\n"
    )
    written = convert_annotations("msrvtt-1k", msrvtt, tmp_path / "out")
    assert written == {str(tmp_path / "out" / "test_1k_retrieval.jsonl"): 2}
    items = read_captioned_clips(tmp_path / "out" / "test_1k_retrieval.jsonl")
    assert [i.captions for i in items] == [
        ["a person is connecting something to system"],
        ["a little girl does gymnastics"],
    ]
    assert Path(items[0].clip.source).resolve() == (msrvtt / "videos" / "all" / "video9770.mp4").resolve()

    kinetics = tmp_path / "k400"
    (kinetics / "test" / "abseiling").mkdir(parents=True)
    (kinetics / "test" / "abseiling" / "abc_000010_000020.mp4").write_bytes(b"x")
    (kinetics / "test.csv").write_text(
        "label,youtube_id,time_start,time_end,split\nabseiling,abc,10,20,test\nair drumming,def,0,10,test\n"
    )
    (kinetics / "validate.csv").write_text("label,youtube_id,time_start,time_end,split\nzumba,ghi,5,15,validate\n")
    written = convert_annotations("kinetics400", kinetics, tmp_path / "k")
    assert (
        written[str(tmp_path / "k" / "test_labelled.jsonl")] == 2
        and written[str(tmp_path / "k" / "val_labelled.jsonl")] == 1
    )
    assert (tmp_path / "k" / "labels.txt").read_text().splitlines() == ["abseiling", "air drumming", "zumba"]
    items = read_labelled_clips(tmp_path / "k" / "test_labelled.jsonl")
    assert [i.label for i in items] == ["abseiling", "air drumming"]
    assert Path(items[0].clip.source).resolve() == (kinetics / "test" / "abseiling" / "abc_000010_000020.mp4").resolve()
    assert Path(items[1].clip.source).name == "def_000000_000010.mp4"

    (kinetics / "test.csv").write_text("youtube_id,time_start\nabc,1\n")
    with pytest.raises(AnnotationFormatError, match="no column 'label'"):
        convert_annotations("kinetics400", kinetics, tmp_path / "k")
