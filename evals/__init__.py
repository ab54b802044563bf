"""Offline evaluation of the diagnosis task (answer schema `diseases` + `reason`): metrics against
gold, grounding in the patient record, answer statistics, and the official submission format."""

from evals.metrics import EvalConfig, lcs_f1, match_one_to_one, score_record
from evals.report import evaluate, format_table
from evals.submission import (
    Answer,
    SubmissionFormat,
    format_diseases,
    format_reason,
    load_answers,
    read_submission,
    write_submission,
)

__all__ = [
    "Answer",
    "EvalConfig",
    "SubmissionFormat",
    "evaluate",
    "format_diseases",
    "format_reason",
    "format_table",
    "lcs_f1",
    "load_answers",
    "match_one_to_one",
    "read_submission",
    "score_record",
    "write_submission",
]
