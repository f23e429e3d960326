"""``lit-unlearn export`` on the command line: its arguments (:func:`_parser`) and :func:`main`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lit_unlearn.export.inputs import DEFAULT_SCHEMES, DTYPE_CHOICES, QUANTIZE_CHOICES
from lit_unlearn.export.pipeline import export
from lit_unlearn.export.report import ExportReport
from lit_unlearn.gguf_io import GGUF_EXPORT_FORMATS
from lit_unlearn.quantization import SCHEMES

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lit-unlearn export",
        description=(
            "Merge a LoRA adapter into its base (or take a full-parameter model), save it as safetensors for "
            "deployment, and report per quantization scheme how much of the unlearning update survives."
        ),
    )
    parser.add_argument(
        "adapter_or_model", help="adapter directory (adapter_config.json), or a model directory with --base"
    )
    parser.add_argument("output_dir", help="directory for the merged model, tokenizer and survival reports")
    parser.add_argument("--base", default=None, help="base model (default: the adapter's)")
    parser.add_argument(
        "--quantize", default="none", choices=QUANTIZE_CHOICES,
        help="also save a bitsandbytes copy in OUTPUT_DIR/<format> (default: none)",
    )
    parser.add_argument(
        "--schemes", nargs="+", default=list(DEFAULT_SCHEMES), metavar="SCHEME",
        help=f"schemes to report (default: {' '.join(DEFAULT_SCHEMES)}); any of {', '.join(SCHEMES)}",
    )
    parser.add_argument(
        "--gguf", default=None, choices=GGUF_EXPORT_FORMATS, metavar="FORMAT",
        help="also write OUTPUT_DIR/model.FORMAT.gguf for llama.cpp: " + ", ".join(GGUF_EXPORT_FORMATS)
        + " (base = the format of the .gguf the base was loaded from)",
    )
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="saved dtype (default: auto)")
    parser.add_argument("--worst", type=int, default=5, help="worst layers listed per scheme (default: 5)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty OUTPUT_DIR")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model's own code")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> ExportReport:
    """``lit-unlearn export``: parse ``argv``, export, print the survival report (Markdown)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        report = export(
            args.adapter_or_model, args.output_dir, base=args.base, quantize=args.quantize,
            schemes=args.schemes, dtype=args.dtype, worst=args.worst, overwrite=args.overwrite,
            trust_remote_code=args.trust_remote_code, progress=not args.no_progress, gguf=args.gguf,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        parser.error(str(err))
    print(report.to_markdown())
    copy = f"; {report.quantize} copy: {report.quantized_dir}" if report.quantized_dir else ""
    print(f"Merged model: {report.output_dir}{copy}")
    if report.gguf_file is not None:
        print(f"llama.cpp file: {report.gguf_file}")
    return report
