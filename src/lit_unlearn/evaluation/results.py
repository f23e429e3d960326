"""``ResultsTable``: MUSE results of several methods at several precisions, in the papers' layout.

One row per (method, precision), columns VerbMem on the forget set (↓), KnowMem on the forget set (↓),
PrivLeak (→ 0) and utility = KnowMem on the retain set (↑), as in the tables of P1 and P2. The table
writes Markdown, CSV and JSON and logs itself to any Lightning logger.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_unlearn._atomic import atomic_write_text, atomic_writer

__all__ = ["COLUMNS", "RESULTS_TABLE_KEY", "ResultsTable", "scalar_name"]

#: Key of the ``wandb.Table`` that :meth:`ResultsTable.log_to` logs to a ``WandbLogger``.
RESULTS_TABLE_KEY = "eval/results"

# (result key, column title) in the papers' order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("verbmem_forget", "VerbMem ↓"),
    ("knowmem_forget", "KnowMem ↓"),
    ("privleak", "PrivLeak →0"),
    ("knowmem_retain", "Utility ↑"),
)
# Plain names for CSV/JSON headers and logged metric keys.
_PLAIN = {
    "verbmem_forget": "verbmem",
    "knowmem_forget": "knowmem",
    "privleak": "privleak",
    "knowmem_retain": "utility",
}


def scalar_name(key: str) -> str:
    """The logged name of an ``evaluate`` result key: ``verbmem_forget`` → ``verbmem``,
    ``knowmem_forget`` → ``knowmem``, ``knowmem_retain`` → ``utility``; others unchanged."""
    return _PLAIN.get(key, key)


def _fmt(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def _json_number(value: float | None) -> float | None:
    # JSON has no NaN; a missing number is null.
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


@dataclass
class ResultsTable:
    """Rows of MUSE results keyed by (method, precision); a re-added row replaces the old one.

    Example::

        >>> table = ResultsTable()
        >>> table.add("npo_gdr (LoRA)", "nf4", {"verbmem_forget": 1.2, "knowmem_forget": 3.4,
        ...                                   "privleak": -5.0, "knowmem_retain": 44.8, "auc": 0.45})
        >>> print(table.to_markdown().splitlines()[0])
        | Method | Precision | VerbMem ↓ | KnowMem ↓ | PrivLeak →0 | Utility ↑ |
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    #: (result key, column title) pairs the Markdown shows; another benchmark passes its own
    #: (e.g. :data:`lit_unlearn.real.COLUMNS`). Every key is kept in CSV and JSON either way.
    columns: tuple[tuple[str, str], ...] = COLUMNS

    def add(self, method: str, precision: str, results: Mapping[str, float]) -> None:
        """Add (or replace) the row of ``method`` at ``precision`` with the output of ``evaluate``."""
        row = {"method": method, "precision": precision, **{k: float(v) for k, v in results.items()}}
        self.rows = [r for r in self.rows if (r["method"], r["precision"]) != (method, precision)] + [row]

    def extend(self, other: ResultsTable) -> None:
        """Add every row of ``other``."""
        for row in other.rows:
            self.add(
                row["method"],
                row["precision"],
                {k: v for k, v in row.items() if k not in ("method", "precision")},
            )

    @property
    def methods(self) -> list[str]:
        """Methods in order of first appearance."""
        return list(dict.fromkeys(r["method"] for r in self.rows))

    def get(self, method: str, precision: str) -> dict[str, Any] | None:
        """The row of ``method`` at ``precision``, or ``None``."""
        return next((r for r in self.rows if r["method"] == method and r["precision"] == precision), None)

    def to_markdown(self) -> str:
        """The table in Markdown, two decimals, ``–`` where a number is missing."""
        header = "| Method | Precision | " + " | ".join(title for _, title in self.columns) + " |"
        rule = "|" + "---|" * 2 + "---:|" * len(self.columns)
        body = [
            f"| {r['method']} | {r['precision']} | "
            + " | ".join(_fmt(r.get(key)) for key, _ in self.columns)
            + " |"
            for r in self.rows
        ]
        return "\n".join([header, rule, *body])

    def _records(self) -> list[dict[str, Any]]:
        records = []
        for r in self.rows:
            record = {"method": r["method"], "precision": r["precision"]}
            record.update({scalar_name(key): _json_number(r.get(key)) for key, _ in self.columns})
            record.update({k: _json_number(v) for k, v in r.items() if k not in record and k not in _PLAIN})
            records.append(record)
        return records

    def write(self, directory: str | Path, stem: str = "results") -> dict[str, Path]:
        """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.json`` into ``directory``; return their paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {ext: directory / f"{stem}.{ext}" for ext in ("md", "csv", "json")}
        # Each file is written beside itself and renamed into place: a crash never leaves a half table.
        atomic_write_text(paths["md"], self.to_markdown() + "\n")
        records = self._records()
        fieldnames = list(dict.fromkeys(k for rec in records for k in rec)) or ["method", "precision"]
        with atomic_writer(paths["csv"], newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(records)
        atomic_write_text(paths["json"], json.dumps(records, indent=2) + "\n")
        return paths

    def scalars(self, primary: str | None = None) -> dict[str, float]:
        """Every number as ``eval/<precision>/<metric>`` for rows of ``primary`` (the method being trained)
        and ``eval/<method>/<precision>/<metric>`` for the others; NaNs are left out."""
        out = {}
        for r in self.rows:
            prefix = "eval" if r["method"] == primary else f"eval/{r['method']}"
            for key, value in r.items():
                if key in ("method", "precision") or value is None or math.isnan(value):
                    continue
                out[f"{prefix}/{r['precision']}/{scalar_name(key)}"] = value
        return out

    def log_to(self, logger: Any, step: int | None = None, primary: str | None = None) -> None:
        """Log to a Lightning logger: a ``wandb.Table`` (key ``eval/results``) for a ``WandbLogger``,
        otherwise the numbers as scalars (:meth:`scalars`) through ``log_metrics`` (a ``CSVLogger``
        writes them to its CSV)."""
        if _is_wandb_logger(logger):
            columns = ["method", "precision", *(scalar_name(key) for key, _ in self.columns), "auc"]
            data = [[rec.get(c) for c in columns] for rec in self._records()]
            logger.log_table(key=RESULTS_TABLE_KEY, columns=columns, data=data, step=step)
        scalars = self.scalars(primary)
        if scalars:
            logger.log_metrics(scalars, step=step)

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> ResultsTable:
        """A table from rows as :attr:`rows` holds them (e.g. read back from a checkpoint)."""
        return cls(rows=[dict(r) for r in rows])


def _is_wandb_logger(logger: Any) -> bool:
    # Importing the logger class does not import wandb itself; `log_table` does, only when called.
    from lightning.pytorch.loggers import WandbLogger

    return isinstance(logger, WandbLogger)
