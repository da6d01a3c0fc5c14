"""ipywidgets explorers with a static view for the site.

In a live Jupyter kernel :func:`explorer` displays the interactive widget; when the notebook is
executed for the site (render mode ``static`` in the run's context) there is no kernel behind the page,
so it displays a view that needs no kernel instead: ``site_view``, a chart whose controls are
Vega-Lite parameters bound to HTML inputs over a precomputed grid (:func:`mpnn.runtime.plots.bound`,
:func:`mpnn.runtime.plots.operating_point`), which filters and redraws in the browser; or, where
precomputation cannot serve, ``static_view``: a static chart (through :func:`mpnn.runtime.plots.show`)
or HTML, and the page says it is a static picture.
"""
from __future__ import annotations

from typing import Callable

from . import plots


def explorer(build_widget: Callable[[], object], static_view=None, *, name: str = "explorer",
             caption: str = "", site_view=None) -> None:
    """Show ``build_widget()`` live; in the site ``site_view`` (a bound chart, or a callable returning
    one), else ``static_view`` (chart / HTML string / callable).

    ``site_view`` is shown as figure ``<name>-site`` with a note that it works in the browser over
    precomputed settings; ``static_view`` as ``<name>-static`` with a note that it is a static picture.
    """
    from IPython.display import HTML, display
    if site_view is None and static_view is None:
        raise ValueError(f"explorer {name!r}: give a site_view (plots.bound chart) or a static_view")
    if plots.site_mode():
        if site_view is not None:
            view = site_view() if callable(site_view) else site_view
            display(HTML("<p class='mpnn-site-note'><em>Explorer: move the controls under the chart; it redraws "
                         "in your browser from precomputed results"
                         + (f" ({caption})" if caption else "") + ". In Jupyter (<code>make lab</code>) the "
                         "live version recomputes.</em></p>"))
            plots.show(view, f"{name}-site", caption=caption or "the explorer's settings, precomputed")
            return
        note = ("<p class='mpnn-static-note'><em>Interactive explorer: it recomputes, so it needs a kernel; "
                "open this chapter in Jupyter (<code>make lab</code>) to use it. Here, a static picture"
                + (f": {caption}" if caption else "") + ".</em></p>")
        display(HTML(note))
        view = static_view() if callable(static_view) else static_view
        if isinstance(view, str):
            display(HTML(view))
        elif view is not None:
            plots.show(view, f"{name}-static", caption=caption or "a static view of the explorer")
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
