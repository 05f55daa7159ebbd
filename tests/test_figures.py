"""The theory figures: every registered one draws, with labelled axes; the writer's files and errors."""

import pytest
from matplotlib.figure import Figure

from sparse_eoc.figures import FIGURES, write_figures

#: Cheap arguments for the expensive figures (the real ones use the defaults).
FAST = {
    6: dict(depth=12, width=40, seeds=2, batch_size=8),  # finite-width networks, torch
    7: dict(n_sparsities=6),  # one bifurcation scan per sparsity and panel
}


def _labelled(ax, axis: str) -> bool:
    """The axis has a label, or shares its axis with a panel that has one (shared x/y in a grid)."""
    get = f"get_{axis}label"
    if getattr(ax, get)().strip():
        return True
    shared = ax.get_shared_x_axes() if axis == "x" else ax.get_shared_y_axes()
    return any(getattr(other, get)().strip() for other in shared.get_siblings(ax))


@pytest.mark.parametrize("number", sorted(FIGURES))
def test_figure_draws_with_labelled_axes(number):
    stem, caption, draw = FIGURES[number]
    assert stem and caption.endswith(".")
    fig = draw(**FAST.get(number, {}))
    assert isinstance(fig, Figure)
    assert fig.axes
    for ax in fig.axes:
        assert ax.has_data(), f"figure {number}: an empty panel"
        assert _labelled(ax, "x") and _labelled(ax, "y"), f"figure {number}: unlabelled axes {ax.get_title()!r}"


def test_write_figures_one(tmp_path):
    paths = write_figures(tmp_path, only=1, progress=False)
    names = sorted(p.name for p in paths)
    assert names == ["01_activations.pdf", "01_activations.png", "index.md"]
    assert all(p.stat().st_size > 1000 for p in paths if p.suffix != ".md")
    assert (tmp_path / "01_activations.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index = (tmp_path / "index.md").read_text()
    assert "01_activations.png" in index and FIGURES[1][1] in index


@pytest.mark.parametrize("only", [0, 8, "1", True])
def test_write_figures_unknown_number(tmp_path, only):
    with pytest.raises(ValueError, match=r"only must be one of \[1, 2, 3, 4, 5, 6, 7\]"):
        write_figures(tmp_path, only=only, progress=False)
    assert not list(tmp_path.iterdir())


def test_the_palette_is_plotstyles_and_covers_every_activation():
    # One palette (sparse_eoc.plotstyle, no matplotlib) for the theory and the report figures;
    # sparse_eoc.figures keeps the names importable.
    from sparse_eoc import figures, plotstyle
    from sparse_eoc.activations import ACTIVATIONS
    from sparse_eoc.experiments import report_figures

    assert (figures.COLORS, figures.CMAPS, figures.LABELS) == (plotstyle.COLORS, plotstyle.CMAPS, plotstyle.LABELS)
    assert figures.LABELS is report_figures.LABELS is plotstyle.LABELS
    assert set(plotstyle.COLORS) == set(plotstyle.LABELS) == {"relu", *ACTIVATIONS}
    assert set(plotstyle.CMAPS) == set(ACTIVATIONS)
