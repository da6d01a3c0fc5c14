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
