"""Agreement of ``vlm.evaluation.metrics.ptb_tokenizer.ptb_tokenize`` with the COCO toolkit's Java tokenizer.

Runs Stanford CoreNLP 3.4.1's PTBTokenizer (the jar shipped in pycocoevalcap; needs ``java``)
exactly as ``pycocoevalcap.tokenizer.ptbtokenizer.PTBTokenizer`` does, on every non-empty line of
the given text files, and counts the lines whose tokens after punctuation removal (what the
metrics see) are identical to the pure-Python tokenizer's.

    python scripts/compare_ptb_tokenizer.py captions.txt [more.txt ...] [--show 20]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from vlm.evaluation.metrics.ptb_tokenizer import PUNCTUATIONS, ptb_tokenize


def java_tokenize(lines: list[str]) -> list[str]:
    """The COCO toolkit's tokenisation of each line (punctuation removed)."""
    import pycocoevalcap

    jar = Path(list(pycocoevalcap.__path__)[0]) / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as handle:
        handle.write("\n".join(lines))
    try:
        command = [
            "java",
            "-cp",
            str(jar),
            "edu.stanford.nlp.process.PTBTokenizer",
            "-preserveLines",
            "-lowerCase",
            handle.name,
        ]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split("\n")
    finally:
        Path(handle.name).unlink()
    return [" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS) for line in output[: len(lines)]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+")
    parser.add_argument("--show", type=int, default=10, help="differing lines to print")
    args = parser.parse_args()
    if shutil.which("java") is None:
        print("java is not installed; the COCO toolkit's tokenizer needs it", file=sys.stderr)
        return 1
    lines = [
        line.replace("\n", " ").strip()
        for path in args.files
        for line in Path(path).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    reference = java_tokenize(lines)
    differing = [(line, ref, ptb_tokenize(line)) for line, ref in zip(lines, reference) if ptb_tokenize(line) != ref]
    for line, ref, mine in differing[: args.show]:
        print(f"text:   {line}\njava:   {ref}\npython: {mine}\n")
    print(f"{len(lines) - len(differing)}/{len(lines)} lines identical after punctuation removal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
