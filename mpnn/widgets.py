"""ipywidgets explorers with a static view for the site.

In a live Jupyter kernel :func:`explorer` displays the interactive widget; when the notebook is
executed for the site (papermill with ``MPNN_RENDER=static``) there is no kernel behind the page,
so it displays ``static_view`` instead: an Altair chart (through :func:`mpnn.plots.show`) or HTML.
"""
from __future__ import annotations

from typing import Callable

from . import plots


def explorer(build_widget: Callable[[], object], static_view, *, name: str = "explorer",
             caption: str = "") -> None:
    """Show ``build_widget()`` live, or ``static_view`` (chart / HTML string / callable) in the site."""
    from IPython.display import HTML, display
    if plots.site_mode():
        note = ("<p class='mpnn-static-note'><em>Interactive explorer: open this chapter in Jupyter "
                "(<code>make lab</code>) to use it. Static view"
                + (f": {caption}" if caption else "") + ".</em></p>")
        display(HTML(note))
        view = static_view() if callable(static_view) else static_view
        if isinstance(view, str):
            display(HTML(view))
        elif view is not None:
            plots.show(view, f"{name}-static")
        return
    display(build_widget())
