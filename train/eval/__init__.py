"""LLaVA-1.5's evaluation protocol, in pure Python: the benchmark registry with the paper's response-format prompts
(its Tables 7-8), readers for LLaVA's eval question and answer files and for each benchmark's official annotations,
the scorers the published numbers come from, and the results and submission files.

| module | what |
|---|---|
| [`benchmarks`] | `BENCHMARKS`, `add_response_prompt`, `evaluate`, `write_results`, `write_vqav2_submission` |
| [`scorers`] | `normalize_answer` (official VQA normalisation), `vqa_accuracy`, one `score_<benchmark>` per benchmark |
| [`formats`] | `read_questions`, `read_answers` and one reader per annotation format |
| [`run`] | `minillava eval`: `generate_answers` (batched greedy, resumable answer JSONL), `evaluate_model`, `score_answers` |

Everything but [`run`] is pure Python; [`run`] imports torch and transformers only when a model is loaded.
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
from .run import evaluate_model, generate_answers, load_model, save_results_plot, score_answers
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
    "evaluate_model",
    "generate_answers",
    "get_benchmark",
    "load_model",
    "normalize_answer",
    "read_answers",
    "read_questions",
    "save_results_plot",
    "score_answers",
    "vqa_accuracy",
    "write_results",
    "write_vizwiz_submission",
    "write_vqav2_submission",
]
