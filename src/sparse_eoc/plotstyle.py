"""The plotting palette shared by every figure: a colour, a colour map and a label per activation.

Plain data (strings), so that modules which only *name* activations the way the figures
do (the results table of :mod:`sparse_eoc.experiments.results`) need neither matplotlib
nor torch. The figures (:mod:`sparse_eoc.figures`, :mod:`sparse_eoc.experiments.report_figures`)
draw with it. Keys are the registry's activation names (:data:`sparse_eoc.activations.ACTIVATIONS`)
plus ``relu``, the baseline (``relu_tau`` with tau = 0).

Example::

    from sparse_eoc.plotstyle import COLORS, LABELS
    ax.plot(x, y, color=COLORS["crelu"], label=LABELS["crelu"])   # "tab:blue", "CReLU"
"""

from __future__ import annotations

__all__ = ["COLORS", "CMAPS", "LABELS"]

#: One matplotlib colour per activation, used by every figure.
COLORS = {"relu": "0.35", "relu_tau": "tab:red", "st_tau": "tab:orange", "crelu": "tab:blue", "cst": "tab:green"}
#: Sequential matplotlib colour-map names matching COLORS, for a family of curves of one activation.
CMAPS = {"relu_tau": "Reds", "st_tau": "Oranges", "crelu": "Blues", "cst": "Greens"}
#: Mathtext names of the activations (matplotlib renders ``$...$``; plain text shows them as typed).
LABELS = {"relu": "ReLU", "relu_tau": r"ReLU$_\tau$", "st_tau": r"ST$_\tau$", "crelu": "CReLU", "cst": "CST"}
