"""ipywidgets explorers with a static view for the site.

In a live Jupyter kernel :func:`explorer` displays the interactive widget; when the notebook is
executed for the site (render mode ``static`` in the run's context) there is no kernel behind the page,
so it displays ``static_view`` instead: an Altair chart (through :func:`mpnn.runtime.plots.show`) or HTML.
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


def controls_view(controls: dict[str, object], render: Callable[..., object]):
    """The explorers' one widget pattern: controls above an output that ``render`` redraws.

    ``controls`` maps ``render``'s keyword arguments to ipywidgets controls; whenever one changes
    ``render(**values)`` runs and what it returns is shown: an Altair chart (displayed), an HTML
    string, a DataFrame or any displayable object; ``None`` shows nothing. An exception's message
    is printed in the output instead of breaking the explorer (e.g. a plan that cannot be made).
    """
    import ipywidgets as W
    from IPython.display import HTML, display
    out = W.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            try:
                view = render(**{name: c.value for name, c in controls.items()})
            except (ValueError, KeyError) as err:
                print(f"{type(err).__name__}: {err}")
                return
            if isinstance(view, str):
                display(HTML(view))
            elif view is not None:
                display(view)

    for c in controls.values():
        c.observe(redraw, "value")
    redraw()
    row = W.HBox(list(controls.values()), layout=W.Layout(flex_flow="row wrap"))   # many controls wrap
    return W.VBox([row, out])
