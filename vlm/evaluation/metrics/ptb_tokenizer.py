"""Pure-Python tokenisation equivalent to the COCO caption toolkit's, without Java.

The COCO toolkit (``pycocoevalcap.tokenizer.ptbtokenizer.PTBTokenizer``) runs Stanford CoreNLP
3.4.1's ``PTBTokenizer -preserveLines -lowerCase`` in a Java subprocess, then drops the tokens in
:data:`PUNCTUATIONS`. :func:`ptb_tokenize` reproduces that in Python for the text captions are
made of: lower-casing; splitting punctuation off words; Penn-Treebank contractions
("doesn't" -> "does n't", "can't" -> "ca n't", "cannot" -> "can not", "gonna" -> "gon na",
"dog's" -> "dog 's"); abbreviations that keep their period ("mr.", "u.s.", "p.m."); numbers that
keep their inner punctuation ("5:30", "1,000,000", "3.14"); hyphenated words kept whole; brackets
escaped as ``-lrb-`` ``-rrb-`` ``-lsb-`` ... (lower-cased, so, as in the toolkit, they are NOT
dropped: the toolkit's list has the upper-case ``-LRB-``); runs such as ``!!!`` kept as tokens.

Known differences from the Java tokenizer (rare in captions): its abbreviation list is longer
than :data:`ABBREVIATIONS` (an unlisted abbreviation loses its period here: "approx." ->
"approx"); HTML-like ``<tags>``, e-mail addresses and URLs with trailing punctuation, and symbols
other than ``$ # % & * + = @`` may be split differently. ``scripts/compare_ptb_tokenizer.py``
measures the agreement against the Java tokenizer on any text file.
"""

from __future__ import annotations

import re

#: Tokens the COCO toolkit removes after tokenising (verbatim from pycocoevalcap).
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

#: Lower-case words that keep their final period (as Stanford's PTBLexer does).
ABBREVIATIONS = frozenset(
    """mr. mrs. ms. dr. st. jr. sr. prof. gen. mt. vs. etc. inc. co. ltd. corp. bros. capt. col.
    gov. lt. messrs. rep. rev. sen. sgt. ave. blvd. jan. feb. mar. apr. aug. sep. sept. oct. nov.
    dec. ft. jun. jul. mon. tue. wed. thu. fri. sat. sun. ph.d. esp. cf. al. dept. est. u.s.a.""".split()
)

_UNICODE = {
    "\u2018": "'",
    "\u2019": "'",
    "\u201a": "'",
    "\u201b": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u201e": '"',
    "\u2013": " -- ",
    "\u2014": " -- ",
    "\u2026": " ... ",
    "\u00a3": " # ",
    "\u20ac": " $ ",
    "\u00a0": " ",
}
_BRACKETS = {"(": " -lrb- ", ")": " -rrb- ", "[": " -lsb- ", "]": " -rsb- ", "{": " -lcb- ", "}": " -rcb- "}
_WHOLE_WORD_SPLITS = {
    "cannot": ["can", "not"],
    "gonna": ["gon", "na"],
    "wanna": ["wan", "na"],
    "gotta": ["got", "ta"],
    "gimme": ["gim", "me"],
    "lemme": ["lem", "me"],
    "y'all": ["y'", "all"],
    "'tis": ["'t", "is"],
    "'twas": ["'t", "was"],
}
_KEEP_WHOLE = frozenset(["'n'", "o'clock", "ma'am"])
_ALWAYS_SPLIT = re.compile(
    r"([*+=&\u2190-\u21ff\u2600-\u27bf])"
)  # tokens of their own wherever they occur (arrows, marks)
_INNER_SPLIT = re.compile(r"(\.\.\.+|(?<!\d)[,;:]|[,;:](?!\d))")  # "hello,world" but not "5:30" or "1,000"
_CONTRACTION = re.compile(r"^(.*[^\W_])(n't|'s|'re|'ve|'ll|'d|'m)$")
_DECIMAL_UNIT = re.compile(r"^(\d+\.\d+)([a-z]+)$")  # "36.1m" -> "36.1 m" (but "10am", "2nd" stay whole)
_INITIALS = re.compile(r"^([a-z]\.)+$")  # "a.", "u.s.", "p.m.", "e.g."
_EMAIL = re.compile(r"^[\w.+-]+@[\w-]+(\.[\w-]+)+$")
_LEADING = ("``", "`", "$", "#", "\u00a5", "--", "'")
_STANDALONE = frozenset(["``", "''", "'s", "'re", "'ve", "'ll", "'d", "'m", "n't"])
_TRAILING_RUN = re.compile(r"([!?]+|\.\.\.+|''|--?|[,;:%'`/])$")


def ptb_tokenize(text: str) -> str:
    """Lower-cased PTB tokens of one caption, punctuation removed, joined by single spaces."""
    return " ".join(token for token in ptb_tokens(text) if token not in PUNCTUATIONS)


def ptb_tokens(text: str) -> list[str]:
    """All PTB tokens of ``text`` (punctuation included), lower-cased."""
    text = text.lower()
    for source, target in {**_UNICODE, **_BRACKETS}.items():
        text = text.replace(source, target)
    text = text.replace('"', ' " ')
    tokens: list[str] = []
    open_quote = True
    for chunk in text.split():
        if chunk == '"':  # straight double quotes alternate between opening and closing
            tokens.append("``" if open_quote else "''")
            open_quote = not open_quote
        else:
            tokens.extend(_split_chunk(chunk))
    return tokens


def _split_chunk(chunk: str) -> list[str]:
    if (
        chunk in _KEEP_WHOLE
        or chunk.startswith("-")
        and chunk.endswith("-")
        and len(chunk) > 2
        and chunk[1:-1].isalpha()
    ):
        return [chunk]  # whole words and escaped brackets ("-lrb-")
    if _EMAIL.match(chunk) or chunk in _STANDALONE:
        return [chunk]
    pieces = [piece for piece in _ALWAYS_SPLIT.split(chunk) if piece]
    if len(pieces) > 1:
        return [token for piece in pieces for token in _split_chunk(piece)]
    pieces = [piece for piece in _INNER_SPLIT.split(chunk) if piece]
    if len(pieces) > 1:
        return [token for piece in pieces for token in _split_chunk(piece)]
    if chunk in _WHOLE_WORD_SPLITS:
        return list(_WHOLE_WORD_SPLITS[chunk])

    leading: list[str] = []
    while chunk:
        if chunk in _WHOLE_WORD_SPLITS or chunk in _KEEP_WHOLE:
            break
        marker = next((m for m in _LEADING if chunk.startswith(m) and len(chunk) > len(m)), None)
        if marker is None and chunk[0] == "-" and chunk[1:2].isalpha():
            marker = "-"  # "-b" -> "- b"
        if marker is None:
            break
        leading.append("`" if marker == "'" else marker)
        chunk = chunk[len(marker) :]

    trailing: list[str] = []
    while chunk and chunk not in _KEEP_WHOLE:
        if chunk.endswith(".") and not chunk.endswith("..."):
            if chunk == "." or _INITIALS.match(chunk) or chunk in ABBREVIATIONS:
                break
            trailing.append(".")
            chunk = chunk[:-1]
            continue
        match = _TRAILING_RUN.search(chunk)
        if match is None or match.start() == 0:
            break
        if match.group(1) == "'" and chunk.endswith("n'"):  # "'n'" and friends stay whole
            break
        trailing.append(match.group(1))
        chunk = chunk[: match.start()]

    middle: list[str] = []
    if chunk in _WHOLE_WORD_SPLITS:
        middle = list(_WHOLE_WORD_SPLITS[chunk])
    elif _DECIMAL_UNIT.match(chunk):
        middle = list(_DECIMAL_UNIT.match(chunk).groups())
    elif chunk:
        contraction = _CONTRACTION.match(chunk)
        middle = [contraction.group(1), contraction.group(2)] if contraction and chunk not in _KEEP_WHOLE else [chunk]
    return leading + middle + trailing[::-1]


def ptb_tokenize_captions(predictions, references) -> tuple[list[str], list[list[str]]]:
    """:func:`ptb_tokenize` over a metric's inputs: predictions [N] and their references [N][R_i]."""
    return [ptb_tokenize(caption) for caption in predictions], [
        [ptb_tokenize(ref) for ref in refs] for refs in references
    ]
