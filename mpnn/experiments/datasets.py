"""The data chapter: where MNIST was found, what it holds, and the tables and figures that show it."""
from __future__ import annotations

import os
from pathlib import Path

import altair as alt
import pandas as pd
import torch

from mpnn.data import mnist
from mpnn.infra import paths

WINDOW = 18     # the tag-partitioning network as originally written sees the top-left 18x18 pixels only


def folder_label(folder) -> str:
    """Where MNIST was found, without the machine's own paths: relative to the repository when it
    lies inside it, else which setting named it."""
    folder = Path(folder).resolve()
    try:
        return folder.relative_to(paths.ROOT.resolve()).as_posix()
    except ValueError:
        named = os.environ.get("MPNN_DATA_DIR")
        if named and Path(named).resolve() == folder:
            return "the MNIST folder named by $MPNN_DATA_DIR (outside the repository)"
        return "the MNIST folder given to the loader (outside the repository)"


def checksum_table(folder) -> pd.DataFrame:
    """One row per IDX file: size, expected and actual SHA-256 (abbreviated), verified or not."""
    expected = mnist.expected_checksums()
    actual = mnist.verify_mnist(folder)
    return pd.DataFrame([{"file": name, "bytes": (folder / name).stat().st_size,
                          "expected SHA-256": expected[name][:16] + "...",
                          "actual SHA-256": actual[name][:16] + "...",
                          "verified": actual[name] == expected[name]} for name in actual])


def samples_per_digit(images: torch.Tensor, labels: torch.Tensor, per_digit: int, seed: int) -> torch.Tensor:
    """``per_digit`` training images of every digit, drawn without replacement (seeded), digit by digit."""
    if not 1 <= per_digit <= 20:
        raise ValueError(f"samples_per_digit must be between 1 and 20, got {per_digit}")
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for digit in range(10):
        idx = (labels == digit).nonzero().flatten()
        picks.append(idx[torch.randperm(len(idx), generator=generator)[:per_digit]])
    return images[torch.cat(picks)]


def mean_images(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(10, 28, 28): the average image of each digit (where the ink is)."""
    return torch.stack([images[labels == d].float().mean(0) for d in range(10)])


def ink_outside_window(means: torch.Tensor, window: int = WINDOW) -> dict[str, float]:
    """Shares of the ink (summed intensity of every digit's mean image) outside the top-left
    ``window`` x ``window`` pixels: in all, right of column ``window - 1``, below row ``window - 1``."""
    total = means.sum()
    return {"outside": float((total - means[:, :window, :window].sum()) / total),
            "right": float(means[:, :, window:].sum() / total), "bottom": float(means[:, window:, :].sum() / total)}


def class_counts(splits: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Images per digit and split, their share of the split, and the parity tag (even 0 / odd 1)."""
    counts = pd.concat([pd.DataFrame({"digit": range(10), "count": torch.bincount(y, minlength=10).tolist(),
                                      "split": split}) for split, y in splits.items()])
    counts["share"] = counts["count"] / counts.groupby("split")["count"].transform("sum")
    counts["parity"] = counts["digit"].map(lambda d: "even (tag 0)" if d % 2 == 0 else "odd (tag 1)")
    return counts


def parity_table(counts: pd.DataFrame) -> pd.DataFrame:
    """Images per split and parity tag, and their share of the split."""
    parity = counts.groupby(["split", "parity"], as_index=False, sort=False)["count"].sum()   # splits in given order
    parity["share"] = parity["count"] / parity.groupby("split")["count"].transform("sum")
    return parity


def balance_summary(counts: pd.DataFrame) -> dict:
    """What the class-balance figures show, as numbers: per split the even share, the rarest and the
    commonest digit with their shares."""
    out = {}
    for split, frame in counts.groupby("split", sort=False):
        rare, common = frame.loc[frame["share"].idxmin()], frame.loc[frame["share"].idxmax()]
        out[split] = {"even": float(frame.loc[frame["digit"] % 2 == 0, "share"].sum()),
                      "rarest": int(rare["digit"]), "rarest_share": float(rare["share"]),
                      "commonest": int(common["digit"]), "commonest_share": float(common["share"])}
    return out


def figure_class_balance(counts: pd.DataFrame) -> alt.Chart:
    """Share of each digit in each split, coloured by parity tag."""
    return alt.Chart(counts).mark_bar().encode(
        x=alt.X("digit:O", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("share:Q", title="share of the split", axis=alt.Axis(format="%")),
        color=alt.Color("parity:N", title="parity tag"),
        column=alt.Column("split:N", title=None, sort=list(dict.fromkeys(counts["split"]))),
        tooltip=["split", "digit", "count", alt.Tooltip("share:Q", format=".2%")]).properties(width=230, height=200)


def figure_parity_split(parity: pd.DataFrame) -> alt.Chart:
    """Each split as one bar normalised to 100%, divided into its even and odd images."""
    return alt.Chart(parity).mark_bar().encode(
        y=alt.Y("split:N", title=None, sort=list(dict.fromkeys(parity["split"]))),
        x=alt.X("count:Q", stack="normalize", title="share of the split", axis=alt.Axis(format="%")),
        color=alt.Color("parity:N", title="parity tag"),
        tooltip=["split", "parity", "count", alt.Tooltip("share:Q", format=".2%")]
    ).properties(width=420, height=80)


# ------------------------------------------------------------------ claims: each returns the arguments of ``run.claim``

FILES, BALANCE = "Where the files were found, and their checksums", "Class balance, and the even/odd split"


def claim_checksums(checks: pd.DataFrame) -> dict:
    """The four files are the original MNIST archives (published SHA-256)."""
    return dict(id="checksums", kind="book",
                document="the four files are the original MNIST archives (published SHA-256)",
                criterion="supported if the SHA-256 of each of the four files equals the one in data/mnist.sha256; "
                          "not supported if any differs",
                measured=f"{int(checks['verified'].sum())}/4 files match data/mnist.sha256",
                verdict=bool(checks["verified"].all()), expected="supported", section=FILES)


def claim_sizes(train_x: torch.Tensor, test_x: torch.Tensor) -> dict:
    """60,000 training and 10,000 test images of 28x28 pixels."""
    return dict(id="sizes", kind="book", document="60,000 training and 10,000 test images of 28x28 pixels",
                criterion="supported if the decoded splits hold exactly 60,000 and 10,000 images of 28 x 28 pixels",
                measured=f"{len(train_x):,} / {len(test_x):,} images of {tuple(train_x.shape[1:])}",
                verdict=len(train_x) == 60_000 and len(test_x) == 10_000 and tuple(train_x.shape[1:]) == (28, 28),
                expected="supported", section=FILES)


def claim_fast_load(fast_load: dict) -> dict:
    """Loading all of MNIST takes under 2 s after the first load (``fast_load``: the timed claim's record)."""
    return dict(id="fast-load", kind="book",
                document="loading all of MNIST takes under 2 s after the first load (decoded-tensor cache)",
                criterion="supported if the median of three loads of both splits from the cache, checksums included, "
                          "takes under 2 s; not supported otherwise",
                measured=fast_load["measured"], verdict=fast_load["verdict"], expected="supported", section=FILES)


def claim_label_order(train_y: torch.Tensor) -> dict:
    """The first training labels are those of the original distribution."""
    return dict(id="label-order", kind="book", document="the first training labels are 5, 0, 4, 1, 9, 2, 1, 3, 1, 4",
                criterion="supported if the first ten training labels are exactly these, in this order",
                measured=str(train_y[:10].tolist()), verdict=train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4],
                expected="supported", section=FILES)


def claim_even_odd(train_y: torch.Tensor) -> dict:
    """The even/odd tag splits MNIST roughly in half."""
    train_even = int((train_y % 2 == 0).sum())
    return dict(id="even-odd", kind="book", document="the even/odd tag splits MNIST roughly in half",
                criterion="supported if the even digits' share of the training set lies between 45% and 55% "
                          "(an exact count, no sampling error)",
                measured=f"{train_even:,} even / {len(train_y) - train_even:,} odd training images "
                         f"({train_even / len(train_y):.1%} even)",
                verdict=0.45 < train_even / len(train_y) < 0.55, expected="supported", section=BALANCE)
