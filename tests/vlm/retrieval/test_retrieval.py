"""Zero-shot retrieval and classification (vlm.retrieval): parity with the official JAX video-text
model, the index (resume, search), metrics, zero-shot classification and the CLI commands."""

import json
import shutil

import numpy as np
import pytest
import torch

from tests.helpers.fixture_files import REFERENCE_DIR, TEST_SPM_MODEL
from tests.helpers.video_factory import write_video
from vlm.cli.main import main as cli_main
from vlm.retrieval.evaluation import evaluate_retrieval, read_captioned_clips, read_labelled_clips
from vlm.retrieval.index import VideoIndex, build_index, search_embeddings
from vlm.retrieval.metrics import recall_summary, retrieval_metrics, top_k_accuracy
from vlm.retrieval.video_text_model import VideoTextModelError, load_video_text_model
from vlm.retrieval.zero_shot import CLIP_KINETICS_TEMPLATES, label_embeddings, resolve_templates

LVT_NPZ = REFERENCE_DIR / "lvt_tiny_params.npz"
ATOL = 1e-4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lvt_io():
    return np.load(REFERENCE_DIR / "lvt_tiny_io.npz")


@pytest.fixture(scope="module")
def lvt_model():
    """The official-format tiny LvT checkpoint with the official test SentencePiece model (16 text tokens, as the fixtures)."""
    return load_video_text_model(LVT_NPZ, tokenizer=TEST_SPM_MODEL, text_length=16)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Six 4-frame 72x72 clips, each a different solid colour drifting right, plus a manifest with captions."""
    root = tmp_path_factory.mktemp("clips")
    colours = {
        "red": (220, 30, 30),
        "green": (30, 200, 40),
        "blue": (40, 50, 220),
        "yellow": (230, 220, 30),
        "white": (240, 240, 240),
        "purple": (150, 40, 170),
    }
    rows = []
    for number, (name, rgb) in enumerate(colours.items()):
        frames = []
        for t in range(4):
            frame = np.full((72, 72, 3), 20, np.uint8)
            frame[20:52, 8 + 6 * t : 40 + 6 * t] = rgb
            frames.append(frame)
        write_video(root / f"{name}.mp4", frames)
        rows.append(
            {"video": f"{name}.mp4", "caption": [f"a {name} square", f"the {name} box moves right"], "n": number}
        )
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.mark.quick
def test_official_lvt_checkpoint_embeddings_match_the_jax_reference(lvt_model, lvt_io):
    videos = lvt_model.embed_clips(lvt_io["video_uint8"].astype(np.float32) / np.float32(255))
    texts = lvt_model.embed_texts([str(c) for c in lvt_io["captions"]])
    assert np.abs(videos.numpy() - lvt_io["video_embeddings"].reshape(videos.shape)).max() <= ATOL
    assert np.abs(texts.numpy() - lvt_io["text_embeddings"].reshape(texts.shape)).max() <= ATOL
    assert torch.allclose(videos.norm(dim=-1), torch.ones(len(videos)), atol=1e-5)
    assert lvt_model.temperature == 0.01  # the official demo's; an .npz carries no learned temperature


def test_converted_directory_gives_the_same_embeddings(lvt_model, lvt_io, tmp_path):
    assert cli_main(["convert", str(LVT_NPZ), str(tmp_path / "lvt"), "--tokenizer", str(TEST_SPM_MODEL)]) == 0
    converted = load_video_text_model(tmp_path / "lvt", text_length=16)
    captions = [str(c) for c in lvt_io["captions"]]
    assert torch.allclose(converted.embed_texts(captions), lvt_model.embed_texts(captions), atol=1e-6)
    video = lvt_io["video_uint8"].astype(np.float32) / np.float32(255)
    assert torch.allclose(converted.embed_clips(video), lvt_model.embed_clips(video), atol=1e-6)


@pytest.mark.quick
def test_sources_that_cannot_embed_text_are_refused(tmp_path):
    with pytest.raises(VideoTextModelError, match="holds no tokenizer"):
        load_video_text_model(LVT_NPZ)
    with pytest.raises(VideoTextModelError, match="video encoder checkpoint"):
        load_video_text_model(REFERENCE_DIR / "encoder_tiny_params.npz", tokenizer=TEST_SPM_MODEL)
    with pytest.raises(FileNotFoundError):
        load_video_text_model(tmp_path / "missing.npz", tokenizer=TEST_SPM_MODEL)
    with pytest.raises(ValueError, match="text_length"):
        load_video_text_model(LVT_NPZ, tokenizer=TEST_SPM_MODEL, text_length=65)


def test_metrics_equal_a_hand_computed_case():
    # 3 videos, 4 captions (video 0 has two); rows: captions, columns: videos
    similarity = torch.tensor(
        [
            [0.9, 0.1, 0.2],  # caption of video 0: rank 1
            [0.3, 0.5, 0.1],  # caption of video 0: rank 2
            [0.8, 0.2, 0.4],  # caption of video 1: rank 3
            [0.1, 0.2, 0.7],  # caption of video 2: rank 1
        ]
    )
    metrics = retrieval_metrics(similarity, [0, 0, 1, 2])
    t2v = metrics["text_to_video"]
    assert t2v["R@1"] == pytest.approx(50.0) and t2v["R@5"] == 100.0 and t2v["median_rank"] == 1.5
    assert t2v["mean_rank"] == pytest.approx((1 + 2 + 3 + 1) / 4)
    # video -> text: video 0's best caption (0.9) ranks 1st; video 1: captions scored 0.1, 0.5, 0.2, 0.2 -> its
    # own (0.2) is beaten by 0.5 only -> rank 2; video 2: own 0.7 beats 0.2, 0.1, 0.4 -> rank 1
    v2t = metrics["video_to_text"]
    assert v2t["R@1"] == pytest.approx(200 / 3) and v2t["median_rank"] == 1 and v2t["queries"] == 3
    assert recall_summary(torch.tensor([1, 6, 11]))["R@5"] == pytest.approx(100 / 3)
    assert top_k_accuracy(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), [1, 1], ks=(1,)) == {"top1": 50.0}


def test_eval_retrieval_equals_recall_computed_by_hand(lvt_model, clips, tmp_path):
    results = evaluate_retrieval(
        lvt_model, read_captioned_clips(clips / "captions.jsonl"), num_workers=0, progress=False
    )
    # by hand: embed every clip and caption, rank each caption's own clip
    from encoder.video.decode import load_clip

    rows = [json.loads(line) for line in (clips / "captions.jsonl").read_text().splitlines()]
    videos = torch.cat(
        [lvt_model.embed_clips(load_clip(clips / r["video"], num_frames=4, size=72)[None]) for r in rows]
    )
    hits, ranks = 0, []
    for number, row in enumerate(rows):
        for caption in row["caption"]:
            scores = videos @ lvt_model.embed_texts([caption])[0]
            rank = int((scores > scores[number]).sum()) + 1
            ranks.append(rank)
            hits += rank == 1
    assert results["captions"] == 12 and results["clips"] == 6
    assert results["text_to_video"]["R@1"] == pytest.approx(100 * hits / 12)
    assert results["text_to_video"]["median_rank"] == float(np.median(ranks))


def test_index_resume_loses_and_duplicates_nothing(lvt_model, clips, tmp_path):
    videos = sorted(str(p) for p in clips.glob("*.mp4"))
    (clips / "broken.mp4").write_bytes(b"not a video")
    videos_with_bad = videos + [str(clips / "broken.mp4")]

    class Killed(Exception):
        pass

    def kill_after_first_batch(done: int) -> None:
        raise Killed

    with pytest.raises(Killed):  # killed after the first batch: its shard is written, the rest is not
        build_index(
            lvt_model,
            videos_with_bad,
            tmp_path / "index",
            batch_size=2,
            shard_size=1,
            num_workers=0,
            progress=False,
            on_batch=kill_after_first_batch,
        )
    assert len(VideoIndex.load(tmp_path / "index")) == 2  # the partial index is searchable
    counts = build_index(lvt_model, videos_with_bad, tmp_path / "index", batch_size=2, num_workers=0, progress=False)
    assert counts == {"encoded": 4, "skipped": 2, "errors": 1}
    index = VideoIndex.load(tmp_path / "index")
    assert sorted(index.videos) == videos and len(set(index.videos)) == len(index.videos)
    assert list(index.errors) == [str(clips / "broken.mp4")]
    fresh = build_index(lvt_model, videos, tmp_path / "fresh", batch_size=3, num_workers=0, progress=False)
    assert fresh["encoded"] == 6
    again = VideoIndex.load(tmp_path / "fresh")
    order = [again.videos.index(v) for v in index.videos]
    assert torch.allclose(index.embeddings, again.embeddings[order], atol=1e-6)
    with pytest.raises(ValueError, match="written with different settings"):  # other frames: refused, nothing written
        build_index(
            load_video_text_model(LVT_NPZ, tokenizer=TEST_SPM_MODEL, num_frames=2),
            videos,
            tmp_path / "index",
            num_workers=0,
            progress=False,
        )
    assert VideoIndex.load(tmp_path / "index").settings.num_frames == 4
    # a third run does nothing
    assert build_index(lvt_model, videos_with_bad, tmp_path / "index", num_workers=0, progress=False)["encoded"] == 0


@pytest.mark.quick
def test_search_backends_agree_and_bound_k(tmp_path):
    pytest.importorskip("faiss")
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(500, 32, generator=generator), dim=-1)
    queries = embeddings[:20] + 0.05 * torch.randn(20, 32, generator=generator)
    scores, rows = search_embeddings(embeddings, queries, top_k=5)
    assert rows[:, 0].tolist() == list(range(20)) and (scores[:, :-1] >= scores[:, 1:]).all()
    _, approx_rows = search_embeddings(embeddings, queries, top_k=5, backend="faiss", cache_dir=tmp_path)
    assert approx_rows[:, 0].tolist() == list(range(20))
    assert len(list(tmp_path.glob("faiss_hnsw_500.index"))) == 1  # the graph is saved for the next search
    assert search_embeddings(embeddings[:3], queries, top_k=10)[1].shape == (20, 3)
    with pytest.raises(ValueError, match="queries must be"):
        search_embeddings(embeddings, torch.zeros(2, 31))
    with pytest.raises(ValueError, match="backend"):
        search_embeddings(embeddings, queries, backend="annoy")


@pytest.mark.quick
def test_zero_shot_templates_are_ensembled(lvt_model):
    labels = ["playing drums", "cooking"]
    templates = ("a video of {}.", "a photo of a person {}.")
    ensembled = label_embeddings(lvt_model, labels, templates)
    by_hand = torch.stack(
        [
            torch.nn.functional.normalize(lvt_model.embed_texts([t.format(label) for t in templates]).mean(0), dim=0)
            for label in labels
        ]
    )
    assert torch.allclose(ensembled, by_hand, atol=1e-6)
    assert len(CLIP_KINETICS_TEMPLATES) == 28 and resolve_templates("clip-kinetics") == CLIP_KINETICS_TEMPLATES
    with pytest.raises(ValueError, match="exactly one"):
        resolve_templates(["no slot"])
    with pytest.raises(ValueError, match="more than once"):
        label_embeddings(lvt_model, ["a", "a"])


def test_labelled_manifests_are_checked(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"video": "a.mp4", "label": "red"}\n{"video": "b.mp4", "candidates": ["x", "y"], "answer": "y"}\n')
    items = read_labelled_clips(good)
    assert items[0].label == "red" and items[1].answer == 1
    for row, message in (
        ('{"video": "a.mp4"}', "label"),
        ('{"video": "a.mp4", "candidates": ["x"], "answer": 3}', "answer"),
        ('{"video": 3, "label": "x"}', "video"),
        ("not json", "JSON"),
    ):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(row + "\n")
        with pytest.raises(ValueError, match=message):
            read_labelled_clips(bad)


def _cli(argv, capsys):
    code = cli_main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_index_search_classify_and_evaluate(clips, tmp_path, capsys):
    model = ["--video-text-model", str(LVT_NPZ), "--tokenizer", str(TEST_SPM_MODEL), "--device", "cpu"]
    folder = tmp_path / "folder"
    shutil.copytree(clips, folder, ignore=shutil.ignore_patterns("broken.mp4"))
    code, out, _ = _cli(
        ["index", str(folder), "--out", str(tmp_path / "index"), "--workers", "0", "--no-progress", *model], capsys
    )
    assert code == 0 and json.loads(out)["encoded"] == 6
    code, out, _ = _cli(["search", str(tmp_path / "index"), "a red square", "--top", "3", "--json"], capsys)
    result = json.loads(out)
    assert code == 0 and [r["rank"] for r in result["results"]] == [1, 2, 3]
    assert all(r["video"].endswith(".mp4") for r in result["results"])
    code, out, _ = _cli(["classify", str(folder / "red.mp4"), "--labels", "red,green,blue", "--json", *model], capsys)
    ranked = json.loads(out)["labels"]
    assert code == 0 and sorted(r["label"] for r in ranked) == ["blue", "green", "red"]
    assert sum(r["probability"] for r in ranked) == pytest.approx(1.0, abs=1e-5)
    code, out, _ = _cli(
        [
            "eval-retrieval",
            "--data",
            str(folder / "captions.jsonl"),
            "--workers",
            "0",
            "--json",
            "--no-progress",
            *model,
        ],
        capsys,
    )
    retrieval = json.loads(out)
    assert code == 0 and retrieval["clips"] == 6
    card = retrieval["protocol"]
    assert card["model"]["kind"] == "video_text" and card["model"]["identity"]
    assert card["decoding"]["frames"] > 0 and card["data"]["data"]["path"] == str(folder / "captions.jsonl")
    (folder / "labelled.jsonl").write_text(
        "".join(json.dumps({"video": f"{c}.mp4", "label": c}) + "\n" for c in ("red", "green", "blue"))
    )
    code, out, _ = _cli(
        [
            "eval-zeroshot",
            "--data",
            str(folder / "labelled.jsonl"),
            "--templates",
            "clip-kinetics",
            "--workers",
            "0",
            "--json",
            "--no-progress",
            *model,
        ],
        capsys,
    )
    results = json.loads(out)
    assert code == 0 and results["classification"]["labels"] == 3 and results["classification"]["top5"] == 100.0
    assert results["protocol"]["settings"]["templates"] == "clip-kinetics"


def test_cli_errors_are_messages(tmp_path, capsys):
    code, _, err = _cli(["search", str(tmp_path), "query"], capsys)
    assert code == 2 and "not a video index" in err
    code, _, err = _cli(
        [
            "classify",
            str(tmp_path / "none.mp4"),
            "--labels",
            "a,b",
            "--video-text-model",
            str(LVT_NPZ),
            "--tokenizer",
            str(TEST_SPM_MODEL),
        ],
        capsys,
    )
    assert code == 2 and "no such video" in err
    code, _, err = _cli(
        ["classify", str(tmp_path), "--labels", "labels.txt", "--video-text-model", str(LVT_NPZ)], capsys
    )
    assert code == 2 and "labels file not found" in err
    with pytest.raises(SystemExit):
        cli_main(["search", str(tmp_path), "q", "--top", "0"])
