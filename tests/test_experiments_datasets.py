"""The data page: where MNIST was found (never a machine path), what the figures show in numbers."""
import pandas as pd
import torch

from mpnn.infra import paths
from mpnn.experiments import datasets as E


def test_folder_label_never_shows_a_machine_path(tmp_path, monkeypatch):
    assert E.folder_label(paths.ROOT / "data" / "mnist") == "data/mnist"
    monkeypatch.setenv("MPNN_DATA_DIR", str(tmp_path))
    assert str(tmp_path) not in E.folder_label(tmp_path) and "MPNN_DATA_DIR" in E.folder_label(tmp_path)
    assert str(tmp_path) not in E.folder_label(tmp_path / "elsewhere")


def test_ink_outside_the_window():
    means = torch.zeros(10, 28, 28)
    means[:, :18, :18] = 1.0            # 324 pixels inside
    means[:, 27, 27] = 324.0            # as much ink in one corner pixel outside
    got = E.ink_outside_window(means)
    assert abs(got["outside"] - 0.5) < 1e-6 and abs(got["right"] - 0.5) < 1e-6 and abs(got["bottom"] - 0.5) < 1e-6


def test_balance_summary():
    counts = E.class_counts({"train": torch.tensor([0, 0, 1, 2, 3, 3, 3, 4, 5, 6, 7, 8, 9])})
    got = E.balance_summary(counts)["train"]
    assert got["commonest"] == 3 and abs(got["commonest_share"] - 3 / 13) < 1e-12
    assert got["rarest"] == 1 and abs(got["even"] - 6 / 13) < 1e-12
    assert isinstance(counts, pd.DataFrame)


def test_data_claims():
    labels = torch.tensor([5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    assert E.claim_label_order(labels)["verdict"] is True
    even = E.claim_even_odd(labels)
    assert even["measured"] == "4 even / 6 odd training images (40.0% even)" and even["verdict"] is False
    sizes = E.claim_sizes(torch.zeros(60_000, 28, 28, dtype=torch.uint8), torch.zeros(10, 28, 28))
    assert sizes["verdict"] is False and sizes["measured"] == "60,000 / 10 images of (28, 28)"
    checks = pd.DataFrame({"verified": [True, True, True, False]})
    assert E.claim_checksums(checks)["measured"] == "3/4 files match data/mnist.sha256"
