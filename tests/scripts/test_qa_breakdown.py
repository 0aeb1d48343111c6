"""scripts/qa_breakdown.py: the grouping of closed-vocabulary answers (pure function, no model)."""

import pytest

from vlm.evaluation.data import QAExample

pytestmark = pytest.mark.quick


@pytest.fixture(scope="module")
def breakdown(load_script):
    return load_script("qa_breakdown").breakdown


def example(video, question, answer, kind):
    return QAExample(
        video=video, question=question, answer=answer, question_type=kind, question_id=f"{video}-{question}"
    )


def test_groups_by_type_object_count_named_shape_and_answer(breakdown):
    examples = [
        example("a", "what colour is the object?", "red", "colour"),  # 1 object, generic
        example("b", "what colour is the heart?", "blue", "colour"),  # 2 objects, names the shape
        example("b", "what color is the star?", "green", "colour"),  # 2 objects, names the shape
        example("a", "how is the object moving?", "left", "motion"),
        example("b", "how are the objects moving?", "left", "motion"),
        example("a", "which shape is shown?", "star", "shape"),
    ]
    predictions = ["red", "blue", "red", "right", "left", "star"]
    result = breakdown(examples, predictions, {"a": 1, "b": 2})
    assert result["colour"] == {"accuracy": pytest.approx(200 / 3), "count": 3}
    assert result["colour, 1 object(s), generic question"] == {"accuracy": 100.0, "count": 1}
    assert result["colour, 2 object(s), names the shape"] == {"accuracy": 50.0, "count": 2}
    assert result["motion = left"] == {"accuracy": 50.0, "count": 2}
    assert result["motion, 1 object(s)"] == {"accuracy": 0.0, "count": 1}
    assert result["shape = star"] == {"accuracy": 100.0, "count": 1}
    assert "colour = red" not in result  # colour answers are grouped by count and naming, not by answer
