"""MUSE evaluation at full precision, 8-bit and 4-bit.

``evaluate(model, tokenizer, data, precision=...)`` returns VerbMem, KnowMem, PrivLeak and utility of a
model as it would be deployed at that precision (a LoRA adapter merged first, then quantized);
``ResultsTable`` collects rows of methods × precisions in the papers' layout. ``EvaluationSettings`` fixes
what is evaluated and how, an ``Evaluator`` evaluates under them with the data loaded once, and
``ReferenceRows`` evaluates reference models (``target``, ``retrain``) once per precision, reusing earlier
runs' rows from the results cache.
"""

from lit_unlearn.evaluation.data import MUSE_LAYOUT, QA, Continuation, EvalData
from lit_unlearn.evaluation.deployment import (
    BITSANDBYTES_PRECISIONS,
    PRECISIONS,
    QUANTIZERS,
    Precision,
    Quantizer,
    check_precision,
    deployed_weights,
    load_bitsandbytes,
    merged_state_dict,
)
from lit_unlearn.evaluation.generation import generate_greedy, min_k_scores, truncate_tokens
from lit_unlearn.evaluation.protocol import (
    RESULT_KEYS,
    TASKS,
    Task,
    check_tasks,
    evaluate,
    evaluation_mode,
    knowmem_prompt,
)
from lit_unlearn.evaluation.references import RETRAIN, ReferenceRows, check_references, load_reference
from lit_unlearn.evaluation.results import COLUMNS, ResultsTable, scalar_name
from lit_unlearn.evaluation.settings import EvaluationSettings, Evaluator

__all__ = [
    "BITSANDBYTES_PRECISIONS",
    "COLUMNS",
    "MUSE_LAYOUT",
    "PRECISIONS",
    "QA",
    "QUANTIZERS",
    "RESULT_KEYS",
    "RETRAIN",
    "TASKS",
    "Continuation",
    "EvalData",
    "EvaluationSettings",
    "Evaluator",
    "Precision",
    "Quantizer",
    "ReferenceRows",
    "ResultsTable",
    "Task",
    "check_precision",
    "check_references",
    "check_tasks",
    "deployed_weights",
    "evaluate",
    "evaluation_mode",
    "generate_greedy",
    "knowmem_prompt",
    "load_bitsandbytes",
    "load_reference",
    "merged_state_dict",
    "min_k_scores",
    "scalar_name",
    "truncate_tokens",
]
