"""Caption metrics: CIDEr-D, BLEU and ROUGE-L equal the COCO caption toolkit (pycocoevalcap) on the
same tokenised input; the ``evaluate`` modules load offline by path; the pure-Python PTB
tokenisation reproduces the toolkit's Java tokenizer (golden outputs recorded from it)."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from vlm.cli import main as cli
from vlm.evaluation.metrics import CAPTION_METRICS, load_metric, metric_path
from vlm.evaluation.metrics.bleu4 import coco_bleu
from vlm.evaluation.metrics.cider_d import cider_d
from vlm.evaluation.metrics.ptb_tokenizer import ptb_tokenize
from vlm.evaluation.metrics.rouge_l import coco_rouge_l, lcs_length

pytestmark = pytest.mark.quick

# (text, the COCO toolkit's tokens after punctuation removal), recorded by running
# stanford-corenlp-3.4.1.jar's PTBTokenizer -preserveLines -lowerCase as pycocoevalcap does.
JAVA_TOKENIZER_GOLDEN = [
    ("A man is playing a guitar.", "a man is playing a guitar"),
    ("A woman slices an onion; then she adds it to the pan!", "a woman slices an onion then she adds it to the pan"),
    (
        "The dog's owner doesn't like it, but they're laughing.",
        "the dog 's owner does n't like it but they 're laughing",
    ),
    (
        "Two people (a man and a woman) are dancing on stage...",
        "two people -lrb- a man and a woman -rrb- are dancing on stage",
    ),
    ('He said "hello" to the crowd and waved.', "he said hello to the crowd and waved"),
    ("It's 5:30 p.m. and the U.S. team is winning 3-2.", "it 's 5:30 p.m. and the u.s. team is winning 3-2"),
    ("A well-known chef cooks -- very quickly -- some eggs.", "a well-known chef cooks very quickly some eggs"),
    (
        "She can't stop; I'm sure we'll see, you'd agree, they've gone.",
        "she ca n't stop i 'm sure we 'll see you 'd agree they 've gone",
    ),
    (
        "A cat [in a box] jumps {high} over $5 and 50% of the time & more.",
        "a cat -lsb- in a box -rsb- jumps -lcb- high -rcb- over $ 5 and 50 % of the time & more",
    ),
    ("someone is cutting a/b and c*d", "someone is cutting a/b and c * d"),
    ("Mr. Smith and Dr. Jones walk to St. Louis.", "mr. smith and dr. jones walk to st. louis"),
    (
        "a child is playing with a toy car , while a dog watches .",
        "a child is playing with a toy car while a dog watches",
    ),
    ("the video shows a man 's hand .", "the video shows a man 's hand"),
    (
        "People are gonna wanna go; gotta love it. Cannot stop.",
        "people are gon na wan na go got ta love it can not stop",
    ),
    ("\"Quoted text,\" she said, 'single quoted' words.", "quoted text she said single quoted words"),
    ("A man's 'hat' isn't red...", "a man 's hat is n't red"),
    ("Is this a question? Yes! Maybe...", "is this a question yes maybe"),
    (
        "e-mail me at john@example.com or visit www.example.com.",
        "e-mail me at john@example.com or visit www.example.com",
    ),
    ("The 1990s were great; 1,000,000 people 3.14 times.", "the 1990s were great 1,000,000 people 3.14 times"),
    ("a person is   speaking    with extra spaces", "a person is speaking with extra spaces"),
    ("don’t stop – the café’s “best” naïve dish — really… ok", "do n't stop the café 's best naïve dish really ok"),
    ("the men's team and the boys' toys and james' car", "the men 's team and the boys toys and james car"),
    ("o'clock rock 'n' roll y'all ma'am", "o'clock rock 'n' roll y' all ma'am"),
    ("it's he's she'd we're I've they'll let's", "it 's he 's she 'd we 're i 've they 'll let 's"),
    ("a 3d movie, 10am, 5pm, 2nd place, 1st. 3rd.", "a 3d movie 10am 5pm 2nd place 1st 3rd"),
    (
        "etc. i.e. e.g. vs. inc. co. ltd. jr. sr. mrs. ms. prof. gen. mt. ft. no. fig.",
        "etc. i.e. e.g. vs. inc. co. ltd. jr. sr. mrs. ms. prof. gen. mt. ft. no fig",
    ),
    ("the end.", "the end"),
    ("a. b. c.", "a. b. c."),
    ("U.S.A. is big. The U.K. too.", "u.s.a. is big the u.k. too"),
    ("he shouted!!! really??? yes?!", "he shouted !!! really ??? yes ?!"),
    ("'tis the season, 'twas fun", "'t is the season 't was fun"),
    (
        "hello...world and hello.world and hello,world and hello;world and hello:world",
        "hello world and hello.world and hello world and hello world and hello world",
    ),
    ("(hello) [world] {again} <tag>", "-lrb- hello -rrb- -lsb- world -rsb- -lcb- again -rcb- <tag>"),
    ("the man-made lake -- and the 10-year-old kid - a dash -", "the man-made lake and the 10-year-old kid a dash"),
    ("a $3.50 coffee costs £2 or €3 or ¥4", "a $ 3.50 coffee costs # 2 or $ 3 or ¥ 4"),
    ("gimme lemme dunno whaddya", "gim me lem me dunno whaddya"),
    ("\"hi\" 'hi' ``hi'' `hi'", "hi hi hi hi"),
    ("can't won't shan't ain't", "ca n't wo n't sha n't ai n't"),
]

WORDS = "a man woman dog is are playing with the ball guitar on in stage cooking food kitchen red blue".split()


def random_corpus(seed: int, clips: int = 40):
    """Tokenised predictions and references with repeated words, 1-7 references, an empty caption."""
    rng = random.Random(seed)

    def sentence(low=1):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, 14)))

    predictions = [sentence() for _ in range(clips)]
    predictions[3] = ""
    references = [[sentence() for _ in range(rng.randint(1, 7))] for _ in range(clips)]
    predictions[5] = references[5][0]  # one exact match
    return predictions, references


def as_coco(predictions, references):
    return {i: refs for i, refs in enumerate(references)}, {i: [p] for i, p in enumerate(predictions)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cider_d_equals_pycocoevalcap_cider(seed):
    predictions, references = random_corpus(seed)
    expected, expected_per_clip = Cider().compute_score(*as_coco(predictions, references))
    score, per_clip = cider_d(predictions, references)
    assert abs(score - expected) <= 1e-6
    assert max(abs(a - b) for a, b in zip(per_clip, expected_per_clip)) <= 1e-6
    assert score > 0 and per_clip[5] > per_clip[3] == 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_bleu_and_rouge_equal_pycocoevalcap(seed):
    predictions, references = random_corpus(seed)
    predictions[3] = "a"  # the toolkit's ROUGE-L divides by the caption length
    gts, res = as_coco(predictions, references)
    expected_bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert coco_bleu(predictions, references) == pytest.approx(expected_bleu, abs=1e-9)
    expected_rouge, expected_rouge_per_clip = Rouge().compute_score(gts, res)
    rouge, rouge_per_clip = coco_rouge_l(predictions, references)
    assert rouge == pytest.approx(expected_rouge, abs=1e-9)
    assert rouge_per_clip == pytest.approx(list(expected_rouge_per_clip), abs=1e-12)
    assert lcs_length("a b c d".split(), "b x d".split()) == 2


def test_evaluate_modules_load_by_path_and_tokenise(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    raw_predictions = ["A man is playing the guitar.", "The dog's running!", "Someone cooks food (eggs)."]
    raw_references = [
        ["A man plays a guitar.", "Someone is playing guitar on stage."],
        ["A dog runs in the park.", "The dog is running.", "A brown dog running."],
        ["A woman is cooking eggs.", "Someone cooks food."],
    ]
    tokenised_predictions = [ptb_tokenize(p) for p in raw_predictions]
    tokenised_references = [[ptb_tokenize(r) for r in refs] for refs in raw_references]
    gts, res = as_coco(tokenised_predictions, tokenised_references)
    for name in CAPTION_METRICS:
        assert metric_path(name).is_file()
    cider = load_metric("cider_d").compute(predictions=raw_predictions, references=raw_references)
    assert cider["cider_d"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-6)
    bleu = load_metric("bleu4").compute(predictions=raw_predictions, references=raw_references)
    assert [bleu[f"bleu_{n}"] for n in range(1, 5)] == pytest.approx(
        Bleu(4).compute_score(gts, res, verbose=0)[0], abs=1e-9
    )
    rouge = load_metric("rouge_l").compute(
        predictions=tokenised_predictions, references=tokenised_references, tokenize=False
    )
    assert rouge["rouge_l"] == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-9)
    with pytest.raises(ValueError, match="unknown caption metric"):
        metric_path("meteor")


@pytest.mark.parametrize("text, expected", JAVA_TOKENIZER_GOLDEN)
def test_ptb_tokenize_matches_the_coco_java_tokenizer(text, expected):
    assert ptb_tokenize(text) == expected


def test_bad_metric_input():
    with pytest.raises(ValueError, match="clip 1 needs a non-empty list"):
        cider_d(["a", "b"], [["a"], []])
    with pytest.raises(ValueError, match="2 predictions but 1 reference lists"):
        coco_bleu(["a", "b"], [["a"]])


def test_cli_eval_caption(tmp_path, capsys):
    predictions, references = random_corpus(4, clips=12)
    pred_file, ref_file = tmp_path / "preds.jsonl", tmp_path / "refs.jsonl"
    pred_file.write_text(
        "".join(json.dumps({"video": f"v{i}", "caption": p}) + "\n" for i, p in enumerate(predictions))
    )
    ref_file.write_text("".join(json.dumps({"video": f"v{i}", "captions": r}) + "\n" for i, r in enumerate(references)))
    out = tmp_path / "results.json"
    assert (
        cli.main(["eval-caption", "--pred", str(pred_file), "--refs", str(ref_file), "--out", str(out), "--json"]) == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    gts, res = as_coco(predictions, references)  # the corpus is already lower-case words: tokenisation is the identity
    assert printed["cider_d"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-6)
    assert printed["bleu_4"] == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0][3], abs=1e-9)
    assert printed["num_clips"] == 12 and printed["missing_predictions"] == 0
    card = printed["protocol"]
    assert card["data"]["predictions"]["sha256"] == hashlib.sha256(pred_file.read_bytes()).hexdigest()
    assert card["data"]["references"]["path"] == str(ref_file) and "model" not in card

    assert (
        cli.main(
            ["eval-caption", "--pred", str(pred_file), "--refs", str(ref_file), "--markdown", str(tmp_path / "t.md")]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert table == (tmp_path / "t.md").read_text() and f"| 12 | {100 * printed['cider_d']:.2f} |" in table

    pred_file.write_text(
        "".join(json.dumps({"video": f"v{i}", "caption": p}) + "\n" for i, p in enumerate(predictions[:10]))
    )
    assert cli.main(["eval-caption", "--pred", str(pred_file), "--refs", str(ref_file)]) == 2
    assert "2 of 12 clips have no prediction" in capsys.readouterr().err
    assert (
        cli.main(["eval-caption", "--pred", str(pred_file), "--refs", str(ref_file), "--allow-missing", "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["missing_predictions"] == 2
    pred_file.write_text('{"video": "v0", "caption": "x"}\n{"video": "v0", "caption": "y"}\n')
    assert cli.main(["eval-caption", "--pred", str(pred_file), "--refs", str(ref_file)]) == 2
    assert "preds.jsonl:2: a second prediction for 'v0'" in capsys.readouterr().err
