"""Evaluation: the evaluation files (``data``), video QA with the paper's protocol (``qa``, run over a
model by ``qa_inference``; answers, shots and vocabularies in ``answers``; ``wups``) and caption metrics
(``metrics``)."""
