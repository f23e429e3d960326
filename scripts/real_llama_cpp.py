"""Does llama.cpp, running the .gguf we export, answer as our fake-quantized evaluation predicted?

    python scripts/real_llama_cpp.py                         # SmolLM2 as shipped, re-exported to its Q4_1
    python scripts/real_llama_cpp.py --delta outputs/real_map/<cell>/seed0/delta.safetensors --format q4_1
    python scripts/real_llama_cpp.py --format q4_k_m --limit 40
    python scripts/real_llama_cpp.py --accuracy real:smollm2 out/model.q4_1.gguf   # files as they are

The model (``real:smollm2``, plus an unlearning update ``ΔW`` saved by ``scripts/real_map.py`` when given) is
written with ``lit_unlearn.gguf_io.write_gguf`` in ``--format`` (``q4_1`` = the base's own format), run by
llama.cpp (llama-cpp-python, one thread, greedy: temperature 0) on the benchmark's questions with the same
chat-template prompt, and compared with :func:`lit_unlearn.real.score` of the same model fake-quantized to
that format: the share of questions whose verdict agrees, and of replies that are identical. llama.cpp
quantizes activations to 8 bits for its Q4/Q5/Q8 dot products and sums in another order, so logits differ
slightly (tests/export/test_export_gguf.py measures it) and a near-tied greedy token may flip: agreement is
a rate, not an identity. Writes ``docs/real_llama_cpp.json`` with --docs.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def llama_cpp_replies(path: Path, prompts: Sequence[list[int]], max_new_tokens: int, eos: int) -> list[list[int]]:
    """Greedy continuations (token ids, end-of-turn excluded) of each prompt under llama.cpp, one thread."""
    from lit_unlearn.gguf_io.llama_cpp import load_llama

    llm = load_llama(path, n_ctx=512, n_threads=1, n_threads_batch=1, verbose=False, seed=0)
    replies = []
    for prompt in prompts:
        llm.reset()
        out: list[int] = []
        for token in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
            if token == eos or len(out) >= max_new_tokens:
                break
            out.append(token)
        replies.append(out)
    return replies


def compare(model: Any, tokenizer: Any, fmt: str, limit: int | None, out_dir: Path) -> dict[str, Any]:
    from lit_unlearn.gguf_io import gguf_base_of
    from lit_unlearn.gguf_io.write import write_gguf
    from lit_unlearn.real import MAX_NEW_TOKENS, is_correct, load_benchmark, verdicts
    from lit_unlearn.real.probe import _prompt_ids

    benchmark = load_benchmark("real:smollm2-data")
    items = list(benchmark.items)[:limit] if limit else list(benchmark.items)
    path = out_dir / f"model.{fmt}.gguf"
    start = time.perf_counter()
    write_gguf(model, tokenizer, path, fmt, base=gguf_base_of(model))
    write_s = time.perf_counter() - start

    start = time.perf_counter()
    from lit_unlearn.deployment import deployed_weights

    with deployed_weights(model, fmt) as deployed:
        ours = verdicts(deployed, tokenizer, items, MAX_NEW_TOKENS)
    ours_s = time.perf_counter() - start

    start = time.perf_counter()
    prompts = [_prompt_ids(tokenizer, item.question)[0].tolist() for item in items]
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    tokens = llama_cpp_replies(path, prompts, MAX_NEW_TOKENS, eos)
    theirs = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]
    llama_s = time.perf_counter() - start

    rows = []
    for item, row, reply in zip(items, ours, theirs, strict=True):
        rows.append({"id": item.id, "ours": row["reply"], "llama_cpp": reply, "ours_correct": row["correct"],
                     "llama_cpp_correct": is_correct(item.question, reply, item.answers, item.rivals)})
    n = len(rows)
    by_split: dict[str, list[float]] = {}
    for item, r in zip(items, rows, strict=True):
        acc = by_split.setdefault(item.split, [0, 0, 0])
        acc[0] += r["ours_correct"]
        acc[1] += r["llama_cpp_correct"]
        acc[2] += 1
    return {
        "format": fmt, "questions": n,
        "verdicts_agree": sum(r["ours_correct"] == r["llama_cpp_correct"] for r in rows) / n,
        "replies_identical": sum(r["ours"] == r["llama_cpp"] for r in rows) / n,
        "accuracy": {s: {"ours": 100 * a / t, "llama_cpp": 100 * b / t, "n": t} for s, (a, b, t) in by_split.items()},
        "seconds": {"write": write_s, "ours": ours_s, "llama_cpp": llama_s},
        "disagreements": [r for r in rows if r["ours_correct"] != r["llama_cpp_correct"]][:10],
    }


def accuracy(files: Sequence[Path], limit: int | None) -> dict[str, dict[str, float]]:
    """Strict-match accuracy per split of each .gguf file under llama.cpp alone (greedy, one thread): what the
    file a user ships answers, e.g. ``MagnitudeFloor``'s export against the shipped model."""
    from lit_unlearn.data.sources import resolve_path
    from lit_unlearn.gguf_io import load_tokenizer
    from lit_unlearn.real import MAX_NEW_TOKENS, is_correct, load_benchmark
    from lit_unlearn.real.probe import _prompt_ids

    tokenizer = load_tokenizer(resolve_path("real:smollm2"))
    items = list(load_benchmark("real:smollm2-data").items)[:limit] if limit else list(load_benchmark("real:smollm2-data").items)
    prompts = [_prompt_ids(tokenizer, item.question)[0].tolist() for item in items]
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = {}
    for path in files:
        replies = llama_cpp_replies(Path(resolve_path(str(path))), prompts, MAX_NEW_TOKENS, eos)
        hits: dict[str, list[int]] = {}
        for item, reply in zip(items, replies, strict=True):
            text = tokenizer.decode(reply, skip_special_tokens=True).strip()
            hits.setdefault(item.split, []).append(int(is_correct(item.question, text, item.answers, item.rivals)))
        out[str(path)] = {split: 100 * sum(h) / len(h) for split, h in hits.items()}
        print(path, {split: round(a, 1) for split, a in out[str(path)].items()}, flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", default="q4_1")
    parser.add_argument("--delta", type=Path, default=None, help="a run's delta.safetensors (scripts/real_map.py)")
    parser.add_argument("--limit", type=int, default=None, help="first N questions only")
    parser.add_argument("--docs", action="store_true", help="append the result to docs/real_llama_cpp.json")
    parser.add_argument("--accuracy", nargs="+", type=Path, default=None, metavar="GGUF",
                        help="only score these .gguf files under llama.cpp (accuracy per split), e.g. real:smollm2 "
                             "and an export of MagnitudeFloor's model")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.accuracy:
        return {"accuracy": accuracy(args.accuracy, args.limit)}

    from lit_unlearn.real import load_smollm2

    model, tokenizer = load_smollm2()
    model.eval()
    if args.delta is not None:
        from safetensors.torch import load_file

        delta = load_file(str(args.delta))
        state = model.state_dict()
        with torch.no_grad():
            for key, d in delta.items():
                state[key].add_(d.to(state[key].dtype))
    with tempfile.TemporaryDirectory() as tmp:
        result = compare(model, tokenizer, args.format, args.limit, Path(tmp))
    result["delta"] = None if args.delta is None else str(args.delta.relative_to(ROOT) if args.delta.is_absolute() else args.delta)
    print(json.dumps({k: v for k, v in result.items() if k != "disagreements"}, indent=1))
    if args.docs:
        path = ROOT / "docs" / "real_llama_cpp.json"
        stored = json.loads(path.read_text()) if path.exists() else []
        stored = [r for r in stored if (r["format"], r.get("delta")) != (result["format"], result["delta"])]
        path.write_text(json.dumps([*stored, result], indent=1))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
