"""The results table as text: Markdown for reading, CSV for other tools.

Both take the rows of :func:`sparse_eoc.experiments.results.build_table` (Price et al.,
ICLR 2024, section 5). Nothing here imports torch.

Example::

    from sparse_eoc.experiments.report_table import table_csv, table_markdown
    from sparse_eoc.experiments.results import build_table, load_runs
    rows = build_table(load_runs("sweeps/table1"))
    print(table_markdown(rows))
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

from sparse_eoc.experiments.results import DIVERGED_CONVENTIONS, IDENTITY, is_clipped
from sparse_eoc.gp.clip import M_MAX

__all__ = ["table_markdown", "table_csv", "format_number", "format_mean_std"]


def _extras_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    fixed = {*IDENTITY, "m", "n_runs", "seeds", "n_completed", "n_diverged", "test_accuracy_mean",
             "test_accuracy_std", "completed_accuracy_mean", "completed_accuracy_std", "val_accuracy_mean",
             "val_accuracy_std", "train_sparsity_mean",
             "test_sparsity_mean", "bifurcation_m", "below_bifurcation", "chance"}
    return [k for k in (rows[0] if rows else {}) if k not in fixed]


def format_number(value: float | None, fmt: str = ".4f") -> str:
    """``value`` in format ``fmt``; ``inf`` for infinity, ``""`` for None (a missing value)."""
    if value is None:
        return ""
    return "inf" if value == math.inf else format(value, fmt)


def format_mean_std(mean: float | None, std: float | None) -> str:
    """``"0.9567 ± 0.0100"``; the mean alone when ``std`` is None (one value), ``""`` when ``mean`` is None."""
    if mean is None:
        return ""
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def _has_val(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether any row has a validation accuracy (its runs held out a validation split)."""
    return any(r.get("val_accuracy_mean") is not None for r in rows)


def _md_cells(row: dict[str, Any], extras: Sequence[str], val: bool = False) -> list[str]:
    clipped = is_clipped(row["activation"])
    if not clipped:
        m_b, below = "n/a", "n/a"
    elif row["bifurcation_m"] is None:
        m_b, below = f"none < {M_MAX * math.sqrt(row['q_star']):g}", "yes"
    else:
        m_b, below = f"{row['bifurcation_m']:.4f}", "yes" if row["below_bifurcation"] else "no"
    return [
        row["activation"], f"{row['sparsity']:g}", f"{row['slope']:g}", format_number(row["m"]),
        *(str(row[k]) for k in extras), str(row["n_runs"]),
        *([format_mean_std(row.get("val_accuracy_mean"), row.get("val_accuracy_std"))] if val else []),
        format_mean_std(row["test_accuracy_mean"], row["test_accuracy_std"]),
        format_mean_std(row["completed_accuracy_mean"], row["completed_accuracy_std"]),
        format_number(row["train_sparsity_mean"]), format_number(row["test_sparsity_mean"]), str(row["n_diverged"]),
        m_b, below,
    ]


def table_markdown(rows: Sequence[dict[str, Any]], *, diverged: str = "chance") -> str:
    """The table as Markdown, one section per model when there are several.

    Columns: activation, s, V'(q*), m, the extra settings, runs, the validation accuracy
    (only where some run of the model held out a validation split; the same convention:
    choose settings on it), test accuracy (mean ± std over seeds under the ``diverged``
    convention; no ± for one run), the same over completed runs, train and test sparsity
    (means over completed runs), diverged (count), m_b and whether m < m_b.
    """
    if diverged not in DIVERGED_CONVENTIONS:
        raise ValueError(f"diverged must be one of {DIVERGED_CONVENTIONS}, got diverged={diverged!r}")
    all_extras = _extras_of(rows)
    counted = {"chance": "at chance (1 / classes)", "last": "at their last completed epoch's accuracy "
               "(chance if none)", "exclude": "not at all"}[diverged]
    lines = ["# Results", "",
             "Test accuracy: mean ± std over seeds (std with ddof = 1; none for one seed); diverged runs count "
             f"{counted}. 'test acc (completed)' leaves them out. Sparsities (fraction of exact zeros in the hidden "
             "layers) are means over completed runs. m_b: the clip at which the variance map bifurcates "
             "(docs/theory.md section 4.3); m < m_b is the theory's prediction of a stable fixed point q*."
             + (" 'val acc': the same on the validation split held out of the training data (same "
                "convention); choose settings on it, not on the test accuracy." if _has_val(rows) else ""), ""]
    models = list(dict.fromkeys(r["model"] for r in rows))
    for model in models:
        if len(models) > 1:
            lines += [f"## {model}", ""]
        mine = [r for r in rows if r["model"] == model]
        extras = [k for k in all_extras if len({repr(r[k]) for r in mine}) > 1]
        val = _has_val(mine)
        header = ["activation", "s", "V'(q*)", "m", *extras, "runs", *(["val acc"] if val else []), "test acc",
                  "test acc (completed)", "train sparsity", "test sparsity", "diverged", "m_b", "m < m_b"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_md_cells(r, extras, val)) + " |" for r in mine]
        lines.append("")
    return "\n".join(lines)


def table_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The table as CSV: one line per row of :func:`build_table`, numbers unrounded.

    ``seeds`` is space-separated; None is an empty field; ``m`` of an unclipped
    activation is ``inf``; booleans are True/False.
    """
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (" ".join(str(s) for s in v) if k == "seeds" else ("" if v is None else v))
                         for k, v in row.items()})
    return buf.getvalue()
