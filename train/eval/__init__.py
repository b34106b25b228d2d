"""LLaVA-1.5's evaluation protocol, in pure Python: the benchmark registry with the paper's response-format prompts
(its Tables 7-8), readers for LLaVA's eval question and answer files and for each benchmark's official annotations,
the scorers the published numbers come from, and the results and submission files.

| module | what |
|---|---|
| [`benchmarks`] | `BENCHMARKS`, `add_response_prompt`, `evaluate`, `write_results`, `write_vqav2_submission` |
| [`scorers`] | `normalize_answer` (official VQA normalisation), `vqa_accuracy`, one `score_<benchmark>` per benchmark |
| [`formats`] | `read_questions`, `read_answers` and one reader per annotation format |

No model runs here: `minillava eval` generates the answers and calls these.
"""

from .benchmarks import (
    BENCHMARKS,
    MULTIPLE_CHOICE_PROMPT,
    PAPER_EVAL_PROMPTS,
    PAPER_TRAINING_PROMPTS,
    SHORT_ANSWER_PROMPT,
    VIZWIZ_PROMPT,
    Benchmark,
    EvalError,
    add_response_prompt,
    evaluate,
    get_benchmark,
    write_results,
    write_vizwiz_submission,
    write_vqav2_submission,
)
from .formats import Answer, EvalFileError, Question, read_answers, read_questions
from .scorers import normalize_answer, vqa_accuracy


__all__ = [
    "BENCHMARKS",
    "MULTIPLE_CHOICE_PROMPT",
    "PAPER_EVAL_PROMPTS",
    "PAPER_TRAINING_PROMPTS",
    "SHORT_ANSWER_PROMPT",
    "VIZWIZ_PROMPT",
    "Answer",
    "Benchmark",
    "EvalError",
    "EvalFileError",
    "Question",
    "add_response_prompt",
    "evaluate",
    "get_benchmark",
    "normalize_answer",
    "read_answers",
    "read_questions",
    "vqa_accuracy",
    "write_results",
    "write_vizwiz_submission",
    "write_vqav2_submission",
]
