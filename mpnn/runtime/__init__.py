"""The book's runtime: everything that executes, records and shows the chapters, none of the science.

* :mod:`.cli`       -- ``python -m mpnn``: run chapters (papermill), build the site, benchmarks, timing replays;
* :mod:`.notebooks` -- the chapters as data: notebooks, their ``parameters`` cells, profiles;
* :mod:`.repro`     -- one run of a chapter: its context, its claims and its manifest;
* :mod:`.stats`     -- means and confidence intervals over seeds;
* :mod:`.plots`     -- Altair chart builders and ``show`` (display + figure files);
* :mod:`.widgets`   -- ipywidgets explorers with a static view for the site;
* :mod:`.bench`     -- the benchmark harness (cases live in :mod:`mpnn.benchmarks`);
* :mod:`.timing`    -- timing claims: interleaved measurements, recorded and replayable;
* :mod:`.sphinx_offline` -- the Sphinx extension that keeps the site free of external requests.
"""
