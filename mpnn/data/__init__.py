"""Datasets of the book.

* :mod:`mpnn.data.mnist` -- MNIST from the original IDX files, checksummed and cached;
* :mod:`mpnn.data.demographics` -- the synthetic 100-observation demographic data (the switch-based multi-part network document);
* :mod:`mpnn.data.cmnist` -- compositional MNIST, three digits side by side (the specialization document).
"""
from .mnist import MnistDataError, load_mnist, mnist_dir, verify_mnist

__all__ = ["MnistDataError", "load_mnist", "mnist_dir", "verify_mnist"]
