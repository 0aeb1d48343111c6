"""Lean installs: the base package (library and CLI) imports none of the extras' packages, and a
missing extra is a one-line message naming it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from encoder.common.extras import EXTRAS, MissingExtraError, require

REPO = Path(__file__).resolve().parents[3]
OPTIONAL = ("gradio", "peft", "datasets", "evaluate", "nltk", "matplotlib", "faiss")


def test_the_library_and_cli_import_no_optional_package():
    code = (
        "import sys\n"
        "import vlm.cli.main, vlm.model, vlm.retrieval.index, vlm.retrieval.evaluation, vlm.training, encoder.videoprism.pretrain.loop\n"
        "vlm.cli.main.build_parser()\n"
        f"print(sorted(m for m in {OPTIONAL!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip() == "[]"


def test_pyproject_extras_match_the_table():
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra, packages in EXTRAS.items():
        declared = {requirement.split(">")[0].split("=")[0] for requirement in extras[extra]}
        assert declared == set(packages), extra
    assert extras["all"] == ["prism-vlm[app,serve,train,eval,faiss]"]


@pytest.mark.parametrize(
    ("blocked", "argv", "extra"),
    [
        ("gradio", ["app"], "app"),
        ("uvicorn", ["serve"], "serve"),
        ("evaluate", ["eval-caption", "--pred", "P", "--refs", "R"], "eval"),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(blocked, argv, extra, monkeypatch, capsys, tmp_path):
    from vlm.cli.main import main

    monkeypatch.setitem(sys.modules, blocked, None)  # import raises ImportError, as when not installed
    if argv[0] == "eval-caption":
        (tmp_path / "p.jsonl").write_text('{"video": "a", "caption": "x"}\n')
        (tmp_path / "r.jsonl").write_text('{"video": "a", "captions": ["x"]}\n')
        argv = ["eval-caption", "--pred", str(tmp_path / "p.jsonl"), "--refs", str(tmp_path / "r.jsonl")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"pip install 'prism-vlm[{extra}]'" in err


def test_require_and_plots_without_matplotlib(monkeypatch, tmp_path):
    from encoder.training.run_log import plot_metrics_if_installed

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(
        MissingExtraError, match=r"LoRA needs peft, which is not installed: pip install 'prism-vlm\[train\]'"
    ):
        require("peft", "train", "LoRA")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    with pytest.warns(UserWarning, match="matplotlib is not installed"):
        assert plot_metrics_if_installed(tmp_path / "metrics.jsonl", tmp_path / "loss.png") is None
    assert not (tmp_path / "loss.png").exists()


def test_plain_pytest_collects_every_test_from_any_folder(tmp_path):
    """`pytest` (the console script, not `python -m pytest`) run outside the checkout collects the suite:
    the tests import their helpers as ``tests.*`` (pyproject's pythonpath puts the checkout on sys.path)."""
    pytest_script = Path(sys.executable).with_name("pytest")
    command = (
        [str(pytest_script)]
        if pytest_script.is_file()
        else [sys.executable, "-c", "import sys, pytest; sys.exit(pytest.main())"]
    )
    out = subprocess.run(
        [*command, "--collect-only", "-q", "-p", "no:cacheprovider", str(REPO / "tests")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    summary = out.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ tests collected in [\d.]+s", summary), summary  # no "N errors" part
    assert out.stderr == ""
