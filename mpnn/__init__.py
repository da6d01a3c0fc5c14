"""mpnn: modular, partitioned and conditional neural networks -- the helper package of the book.

Each module does one job; the chapters in ``book/`` configure, run, plot and assert with them.
"""
__version__ = "0.1.0"
