"""The export's report: :class:`ExportReport`, what an export wrote and what each scheme keeps of the update,
as ``survival.json`` and the Markdown tables of ``survival.md``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lit_unlearn.quantization import SurvivalStats

__all__ = ["ExportReport"]


@dataclass
class ExportReport:
    """What an export wrote, and the survival statistics of the exported weights per scheme.

    Attributes:
        source: The adapter or model directory that was exported.
        base: The base model the statistics compare against (``W0``).
        kind: ``lora`` (an adapter merged into ``base``) or ``full`` (a full-parameter model).
        output_dir: Where the merged model, its tokenizer and the reports were written.
        quantized_dir: Where the bitsandbytes-quantized copy was written, or ``None``.
        quantize: The bitsandbytes format of ``quantized_dir`` (``none`` if there is none).
        layers: ``scheme → layer name → SurvivalStats`` for each updated linear layer, in model order.
            Names are those of the merged model (``model.layers.0.self_attn.q_proj``).
        worst: How many layers :meth:`worst_layers` lists by default.
        avx512_misdecoded: Layers of the 4-bit copy whose rows are not whole blocks: bitsandbytes 0.50's
            AVX-512 CPU kernel decodes them with other blocks' scales (a GPU decodes them right; see
            :mod:`lit_unlearn.quantization.bnb_decode`). Empty for int8 and block-aligned models.
        base_quantization: The 4-bit format of a QLoRA adapter's base (``nf4``), else ``None``: ``W0`` is
            then the decoded 4-bit base and ``quantized_dir`` the merge re-quantized to that format.
        gguf_file: The llama.cpp file written with ``gguf``, or ``None``.
        gguf_format: Its format (``q4_1``; ``base`` resolved to the base's), or ``None``.
        gguf_tensor_types: GGUF tensor name → the type it is stored in, in ``gguf_file``.
    """

    source: str
    base: str
    kind: Literal["lora", "full"]
    output_dir: str
    quantized_dir: str | None
    quantize: str
    layers: dict[str, dict[str, SurvivalStats]] = field(default_factory=dict)
    worst: int = 5
    avx512_misdecoded: list[str] = field(default_factory=list)
    base_quantization: str | None = None
    gguf_file: str | None = None
    gguf_format: str | None = None
    gguf_tensor_types: dict[str, str] = field(default_factory=dict)

    @property
    def schemes(self) -> list[str]:
        return list(self.layers)

    def total(self, scheme: str) -> SurvivalStats:
        """All layers pooled, as if their weights formed one vector."""
        return SurvivalStats.aggregate(self.layers[scheme].values())

    def worst_layers(self, scheme: str, k: int | None = None) -> list[tuple[str, SurvivalStats]]:
        """The ``k`` layers whose quantized update keeps the least of ``ΔW``'s direction (lowest cosine).

        The cosine is the ranking key because ``retained`` stays near 1 when a few flipped codes carry the
        update on average, while the cosine falls as rounding noise swamps it. Layers with ``ΔW = 0`` have
        nothing to keep and are left out.
        """
        updated = [(name, s) for name, s in self.layers[scheme].items() if s.delta_sq > 0]
        ranked = sorted(updated, key=lambda item: (item[1].cosine, item[1].retained))
        return ranked[: self.worst if k is None else k]

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON: the export's paths and, per scheme, the pooled ``total``, the worst and all layers."""
        return {
            "source": self.source,
            "base": self.base,
            "kind": self.kind,
            "output_dir": self.output_dir,
            "quantized_dir": self.quantized_dir,
            "quantize": self.quantize,
            "avx512_misdecoded": list(self.avx512_misdecoded),
            "base_quantization": self.base_quantization,
            "gguf_file": self.gguf_file,
            "gguf_format": self.gguf_format,
            "gguf_tensor_types": dict(self.gguf_tensor_types),
            "schemes": {
                scheme: {
                    "total": {"layers": len(layers), **self.total(scheme).as_dict()},
                    "worst_layers": [{"layer": name, **s.as_dict()} for name, s in self.worst_layers(scheme)],
                    "layers": {name: s.as_dict() for name, s in layers.items()},
                }
                for scheme, layers in self.layers.items()
            },
        }

    def to_markdown(self) -> str:
        if self.kind == "lora" and self.base_quantization is not None:
            what = f"adapter `{self.source}` merged into the decoded {self.base_quantization} (QLoRA)"
        elif self.kind == "lora":
            what = f"adapter `{self.source}` merged into"
        else:
            what = f"full-parameter model `{self.source}` against"
        n_layers = len(next(iter(self.layers.values()), {}))
        lines = [
            f"# What quantization keeps of the unlearning update in `{self.output_dir}`",
            "",
            f"{what} base `{self.base}`; {n_layers} updated linear layers.",
        ]
        if self.quantized_dir is not None and self.base_quantization is not None:
            lines.append(f"The merge re-quantized to {self.quantize}, as peft's 4-bit merge writes it: "
                         f"`{self.quantized_dir}`.")
        elif self.quantized_dir is not None:
            lines.append(f"bitsandbytes {self.quantize} copy: `{self.quantized_dir}`.")
        if self.gguf_file is not None:
            lines.append(f"llama.cpp file ({self.gguf_format}): `{self.gguf_file}`.")
        if self.avx512_misdecoded:
            lines.append(_avx512_note(self.quantize, self.avx512_misdecoded))
        lines += ["", _table_header("scheme")]
        lines += [_table_row(scheme, self.total(scheme)) for scheme in self.layers]
        for scheme in self.layers:
            worst = self.worst_layers(scheme)
            if worst:
                lines += ["", f"## {scheme}: the {len(worst)} layers keeping the least (lowest cosine)", ""]
                lines += [_table_header("layer"), *(_table_row(f"`{name}`", s) for name, s in worst)]
        lines += [
            "",
            "changed: share of quantization codes the update flips. below ½ step: share of the update "
            "smaller than half a quantization step. retained: ⟨Q(W0+ΔW)−Q(W0), ΔW⟩/‖ΔW‖². cosine and "
            "rel. error compare Q(W0+ΔW)−Q(W0) with ΔW (signal against rounding noise). retained ≈ 1 with "
            "few codes changed means the flipped codes carry the update on average; a low cosine means "
            "4-bit adds noise to it. Whether the forgetting survives is a functional question: evaluate the "
            "quantized model (QuantizedEvaluation).",
            "",
        ]
        return "\n".join(lines)

    def write(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``survival.json`` and ``survival.md`` into ``directory``; return both paths."""
        directory = Path(directory)
        json_path, md_path = directory / "survival.json", directory / "survival.md"
        json_path.write_text(json.dumps(self.as_dict(), indent=2) + "\n", encoding="utf-8")
        md_path.write_text(self.to_markdown(), encoding="utf-8")
        return json_path, md_path


def _table_header(first: str) -> str:
    columns = ("changed", "below ½ step", "retained", "cosine", "rel. error", "‖ΔW‖")
    return f"| {first} | " + " | ".join(columns) + " |\n" + "|---" * (len(columns) + 1) + "|"


def _table_row(label: str, s: SurvivalStats) -> str:
    return (
        f"| {label} | {s.changed:.1%} | {s.below_half_step:.1%} | {s.retained:.3f} | {s.cosine:.3f} "
        f"| {s.rel_error:.3f} | {s.delta_norm:.3g} |"
    )


def _avx512_note(quantize: str, layers: list[str]) -> str:
    shown = ", ".join(f"`{name}`" for name in layers[:3])
    if len(layers) > 3:
        shown += f" and {len(layers) - 3} more"
    return (
        f"Running the {quantize} copy on a CPU with AVX-512: bitsandbytes 0.50 decodes {len(layers)} layers "
        f"({shown}) with other blocks' scales, because their rows are not whole blocks of 64; a GPU decodes "
        "them right. Compute with this copy on a GPU, or on a CPU without AVX-512."
    )
