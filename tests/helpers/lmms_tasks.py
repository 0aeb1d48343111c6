"""Local lmms-eval tasks over generated shapes clips, for the tests of the ``prism_vlm`` model.

:func:`write_lmms_tasks` writes a folder for lmms-eval's ``--include_path`` (``TaskManager(include_path=...)``):
a JSON dataset (one row per question: its video's absolute path, the question, the answer and the choices) and
four task YAMLs over it, with their Python hooks in ``prism_shapes_utils.py``:

- ``prism_shapes_mc``: ``multiple_choice`` (one ``loglikelihood`` request per choice), metric ``acc``;
- ``prism_shapes_open``: ``generate_until`` (greedy, max_new_tokens 32), metric ``exact_match``;
- ``prism_shapes_rounds``: ``generate_until_multi_round``: the question, then the follow-up question of the row;
- ``prism_shapes_chat``: ``generate_until`` through the chat model's messages (its doc_to_messages).
"""

from __future__ import annotations

import json
from pathlib import Path

UTILS = """
def doc_to_visual(doc):
    return [doc["video"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None, previous_output=None, round_idx=None, previous_round_info=None):
    if round_idx is None:
        return doc["question"]
    if round_idx == 1:
        return None, doc["follow_up"], False, previous_output, {"asked": 2}
    return None, None, True, previous_output, previous_round_info


def doc_to_choice(doc):
    return doc["choices"]


def doc_to_messages(doc, lmms_eval_specific_kwargs=None):
    return [{"role": "user", "content": [{"type": "video", "url": doc["video"]}, {"type": "text", "text": doc["question"]}]}]


def rounds_results(doc, results):
    return {"rounds_answered": float(all(isinstance(r, str) for r in results[0]))}
"""

COMMON = """dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_visual: !function prism_shapes_utils.doc_to_visual
doc_to_text: !function prism_shapes_utils.doc_to_text
doc_to_target: answer
"""

TASKS = {
    "prism_shapes_mc": """output_type: multiple_choice
doc_to_choice: !function prism_shapes_utils.doc_to_choice
metric_list:
  - metric: acc
""",
    "prism_shapes_open": """output_type: generate_until
generation_kwargs:
  max_new_tokens: 32
  temperature: 0
  until: ["\\n\\n"]
metric_list:
  - metric: exact_match
""",
    "prism_shapes_rounds": """output_type: generate_until_multi_round
generation_kwargs:
  max_new_tokens: 16
process_results: !function prism_shapes_utils.rounds_results
metric_list:
  - metric: rounds_answered
    aggregation: mean
    higher_is_better: true
""",
    "prism_shapes_chat": """output_type: generate_until
doc_to_messages: !function prism_shapes_utils.doc_to_messages
generation_kwargs:
  max_new_tokens: 24
metric_list:
  - metric: exact_match
""",
}


def write_lmms_tasks(folder: Path, rows: list[dict]) -> Path:
    """The task folder (see the module docstring) for ``rows``: dicts with "video" (an absolute path),
    "question", "answer", "choices" and "follow_up"."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "prism_shapes.json"
    data.write_text(json.dumps(rows), encoding="utf-8")
    (folder / "prism_shapes_utils.py").write_text(UTILS.lstrip(), encoding="utf-8")
    for name, body in TASKS.items():
        (folder / f"{name}.yaml").write_text(f"task: {name}\n" + COMMON.format(data=data) + body, encoding="utf-8")
    return folder
