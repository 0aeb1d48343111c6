"""WUPS: answer similarity through Wu-Palmer similarity on WordNet 3.0 (Malinowski & Fritz, 2014).

WordNet is read with NLTK's ``WordNetCorpusReader`` from the WordNet 3.0 database files, which
install offline from Debian/Ubuntu packages::

    apt-get install wordnet-base wordnet-sense-index      # files land in /usr/share/wordnet

Debian ships no ``lexnames`` file (NLTK needs it); its standard 45 lines, as documented in
lexnames(5WN), are package data (``vlm/data/wordnet_lexnames``) and are served to the reader in
its place. The directory is found in this order: ``$PRISM_WORDNET_DIR``, ``$WNSEARCHDIR``,
``/usr/share/wordnet``, ``/usr/local/WordNet-3.0/dict``, then NLTK's own ``corpora/wordnet`` data
if installed; none of them gives :class:`WordNetNotFoundError` with these instructions.

Two scoring protocols, each at a threshold (0.0 and 0.9 are the ones reported):

* ``"nextqa"`` (NExT-QA's official ``eval_oe.py``, the WUPS the VideoPrism paper reports): both
  answers are lemmatised and stripped of stop words; the similarity of two words is 1 if equal,
  else the WUP similarity of their FIRST (most frequent) synsets, times 0.1 when below the
  threshold; each direction multiplies, over its words, the best similarity to any word of the
  other answer, skipping words with no similar word at all (0 if every word is skipped); the score
  is the smaller direction. Counting (DC) and yes/no (DB) questions score by exact match.
* ``"malinowski"`` (the original DAQUAR / MSVD-QA / MSRVTT-QA WUPS, Malinowski's
  ``calculate_wups.py``): an answer is a set of comma-separated items; the similarity of two items is
  1 if equal, else the best WUP similarity over all their NOUN synsets, times 0.1 when below the
  threshold; each direction multiplies over all items (none skipped). Checked against that script on
  NExT-OE's public HGA predictions (tests/vlm/evaluation/test_qa.py).

Differences from NExT-QA's script, which needs online NLTK data: lemmas come from WordNet's
``morphy`` (noun first, verb first for words ending in -ing/-ed) instead of a POS tagger (pywsd),
and stop words default to :data:`DEFAULT_STOPWORDS` (pass NExT-QA's ``stopwords.txt`` as
``stopwords=`` for its exact list).
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

from encoder.common.errors import PrismVlmError

LEXNAMES_FILE = Path(__file__).resolve().parents[1] / "data" / "wordnet_lexnames"
WORDNET_ENV = "PRISM_WORDNET_DIR"
WORDNET_DIRS = ("/usr/share/wordnet", "/usr/local/WordNet-3.0/dict")
REQUIRED_FILES = (
    "data.noun",
    "index.noun",
    "data.verb",
    "index.verb",
    "data.adj",
    "index.adj",
    "data.adv",
    "index.adv",
)
PROTOCOLS = ("nextqa", "malinowski")
EXACT_MATCH_TYPES = frozenset({"DC", "DB"})  # NExT-QA: counting and yes/no questions

#: Function words removed before NExT-QA-style WUPS (negations and yes/no are kept).
DEFAULT_STOPWORDS = frozenset(
    """a an the this that these those there here is are was were be been being am do does did doing
    has have had having will would shall should can could may might must i me my mine we us our ours
    you your yours he him his she her hers it its they them their theirs who whom whose which what
    when where why how of to in on at by for with from into onto about as than then so and or but if
    while because just also very too some any s 's""".split()
)

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


class WordNetNotFoundError(PrismVlmError, FileNotFoundError):
    """No WordNet 3.0 database could be found (see the module docstring for installing one)."""


def find_wordnet_dir() -> Path | None:
    """The first directory holding the WordNet 3.0 database files, or None."""
    candidates = [os.environ.get(WORDNET_ENV), os.environ.get("WNSEARCHDIR"), *WORDNET_DIRS]
    for candidate in candidates:
        if candidate and all((Path(candidate) / name).is_file() for name in REQUIRED_FILES):
            return Path(candidate)
    return None


def _not_found_message() -> str:
    return (
        "WUPS needs WordNet 3.0, which was not found (looked in $"
        f"{WORDNET_ENV}, $WNSEARCHDIR, {', '.join(WORDNET_DIRS)} and NLTK's data). Install it offline with "
        "`apt-get install wordnet-base wordnet-sense-index` (Debian/Ubuntu), or set "
        f"${WORDNET_ENV} to a directory holding {', '.join(REQUIRED_FILES[:2])}, ..."
    )


@functools.lru_cache(maxsize=4)
def load_wordnet(directory: str | os.PathLike | None = None):
    """NLTK's WordNet reader over a WordNet 3.0 database directory (found automatically when None).

    Raises WordNetNotFoundError, with install instructions, when there is none.
    """
    from encoder.common.extras import require

    require("nltk", "eval", "WUPS")
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _DatabaseDirWordNetReader(WordNetCorpusReader):
        """Reads a WordNet database directory, serving our lexnames file where it has none."""

        def open(self, file):
            if file == "lexnames" and not (Path(str(self._root)) / "lexnames").is_file():
                return open(LEXNAMES_FILE, encoding="utf-8")
            return super().open(file)

        def map_wn(self, version="wordnet"):
            return None  # the mapping to NLTK's own WordNet serves multilingual (OMW) data only

    if directory is not None:
        directory = Path(directory)
        missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
        if missing:
            raise WordNetNotFoundError(f"{directory} is not a WordNet database directory (missing {missing})")
    else:
        directory = find_wordnet_dir()
    if directory is None:
        import nltk

        try:
            nltk.data.find("corpora/wordnet")
        except LookupError:
            raise WordNetNotFoundError(_not_found_message()) from None
        from nltk.corpus import wordnet

        return wordnet
    import nltk

    # NLTK reads only below authorised roots (its data path); authorise the database directory.
    if str(directory) not in [str(entry) for entry in nltk.data.path]:
        nltk.data.path.append(str(directory))
    with warnings.catch_warnings():  # "multilingual functions are not available": we need English only
        warnings.simplefilter("ignore")
        return _DatabaseDirWordNetReader(str(directory), None)


def read_stopwords(source: str | os.PathLike | Iterable[str] | None) -> frozenset[str]:
    """Stop words from a file (one per line), an iterable, or :data:`DEFAULT_STOPWORDS` when None."""
    if source is None:
        return DEFAULT_STOPWORDS
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"stop-word file not found: {path}")
        return frozenset(line.strip().lower() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return frozenset(word.lower() for word in source)


class WupsScorer:
    """WUPS of predicted vs. ground-truth answers under one protocol (see the module docstring).

    wordnet: a WordNet reader (default: :func:`load_wordnet`); stopwords: for the "nextqa" protocol.
    """

    def __init__(
        self,
        protocol: str = "nextqa",
        wordnet=None,
        stopwords: str | os.PathLike | Iterable[str] | None = None,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"WUPS protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.protocol = protocol
        self.wordnet = wordnet if wordnet is not None else load_wordnet()
        self.stopwords = read_stopwords(stopwords)
        self._similarity = functools.lru_cache(maxsize=200_000)(self._uncached_similarity)
        self._lemma = functools.lru_cache(maxsize=50_000)(self._uncached_lemma)

    # ------------------------------------------------------------------ words

    def _uncached_lemma(self, word: str) -> str:
        from nltk.corpus.reader.wordnet import ADJ, ADV, NOUN, VERB

        order = (VERB, NOUN, ADJ, ADV) if word.endswith(("ing", "ed")) else (NOUN, VERB, ADJ, ADV)
        for pos in order:
            lemma = self.wordnet.morphy(word, pos)
            if lemma:
                return lemma
        return word

    def words(self, answer: str) -> list[str]:
        """The items WUPS compares.

        "nextqa": the answer's words, lower-cased, lemmatised, stop words removed. "malinowski": the
        answer's comma-separated items, stripped and otherwise untouched, as the DAQUAR script's
        ``items2list`` (so "chair, table" is two items and "red car" one, which scores only when equal).
        """
        if self.protocol == "malinowski":
            return [item.strip() for item in answer.split(",")]
        words = [self._lemma(word) for word in _WORD.findall(answer.lower())]
        return [word for word in words if word not in self.stopwords]

    def _uncached_similarity(self, first: str, second: str, threshold: float) -> float:
        if first == second:
            return 1.0
        if self.protocol == "nextqa":
            first_synsets, second_synsets = self.wordnet.synsets(first), self.wordnet.synsets(second)
            if not first_synsets or not second_synsets:
                return 0.0
            similarity = first_synsets[0].wup_similarity(second_synsets[0]) or 0.0
        else:
            from nltk.corpus.reader.wordnet import NOUN

            first_synsets, second_synsets = self.wordnet.synsets(first, NOUN), self.wordnet.synsets(second, NOUN)
            similarity = max((a.wup_similarity(b) or 0.0 for a in first_synsets for b in second_synsets), default=0.0)
        return similarity * 0.1 if similarity < threshold else similarity

    def word_similarity(self, first: str, second: str, threshold: float) -> float:
        """Thresholded WUP similarity of two words (1.0 when equal)."""
        return self._similarity(first, second, float(threshold))

    # ------------------------------------------------------------------ answers

    def _directional(self, words: Sequence[str], others: Sequence[str], threshold: float) -> float:
        product, matched = 1.0, False
        for word in words:
            best = max((self.word_similarity(word, other, threshold) for other in others), default=0.0)
            if self.protocol == "nextqa" and best == 0:
                continue  # NExT-QA skips words with no similar word
            product *= best
            matched = True
        return product if matched else 0.0

    def score(self, prediction: str, truth: str, threshold: float, question_type: str | None = None) -> float:
        """WUPS of one prediction against one ground truth, in [0, 1]."""
        predicted, expected = self.words(prediction), self.words(truth)
        if self.protocol == "nextqa" and question_type in EXACT_MATCH_TYPES:
            return float(predicted == expected)
        return min(self._directional(predicted, expected, threshold), self._directional(expected, predicted, threshold))

    def best_score(
        self, prediction: str, truths: Sequence[str], threshold: float, question_type: str | None = None
    ) -> float:
        """The best :meth:`score` over alternative ground truths (NExT-QA's extra reference answers)."""
        return max(self.score(prediction, truth, threshold, question_type) for truth in truths)
