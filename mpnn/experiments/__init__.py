"""The chapters' experiments: one module per chapter, named exactly like its notebook in ``book/``.

Each holds that chapter's data preparation, training recipes, evaluations and the tables (and
one-off figures) its notebook shows. Experiments import mechanisms (``mpnn.*``) and the runtime's
statistics and plots; mechanisms never import experiments, and no chapter imports another.
"""
