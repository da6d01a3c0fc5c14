"""Seeded synthetic demographic data for the switch-based multi-part network (the switch-based multi-part network document).

The document (arXiv 2504.18241, section 4.1) trains five neurons on a synthetic set of 100
observations with demographic features, split by demographic group into subsets of 20, 30, 10, 20
and 20. It gives no generator, so this module defines one and states every choice:

* **Groups** are cells of an age band x income band grid. The *standard world* has the 3 x 3 cells
  Young (18-34) / Mid-age (35-54) / Senior (55-79) x Low (12-30 k$) / Mild (30-70 k$) / High
  (70-150 k$). Each cell has a gender mix (share of women 0.8 "Female", 0.5 "Mixed", 0.2 "Male"),
  hence names like the document's "Mid-age - Mild Income (Mixed)".
* **Features** of one person: ``age`` ~ U(band), ``income`` ~ U(band) (k$), ``female`` ~
  Bernoulli(share), ``education`` = clip(round(N(10 + income/20, 2)), 8, 20) years,
  ``household`` = 1 + Poisson(0.5 + 1.5 exp(-((age - 45)/12)^2)) persons.
* **Target** ``responded`` (did the person answer an offer) ~ Bernoulli(sigmoid(eta)) with a
  *group-specific* logistic model ``eta = b_g + z . w_g`` on the standardised features ``z``
  (:func:`features`), ``(b_g, w_g) = shared + heterogeneity * delta_g``. With ``heterogeneity=0``
  every group follows the same law and specialisation has nothing to find.
* :func:`grid_world` makes ``n`` groups (a finer age x income grid, random ``delta_g``) for the
  neuron-scaling experiment (5 -> 1,000 neurons).

The 100-observation set shipped as ``data/demographics.csv`` is :func:`document_dataset` (seed 0),
written by :func:`to_csv_text`; ``tests/test_demographics.py`` checks that it is reproduced bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

__all__ = ["FEATURES", "World", "standard_world", "grid_world", "sample", "document_dataset",
           "DOCUMENT_GROUPS", "DOCUMENT_SIZES", "features", "targets", "to_csv_text", "write_csv",
           "read_csv", "CSV_PATH"]

FEATURES = ("age", "income", "female", "education", "household")
# fixed standardisation z = (x - centre) / scale, the same for every world and sample
_CENTRE = np.array([45.0, 55.0, 0.5, 13.0, 2.2])
_SCALE = np.array([15.0, 35.0, 0.5, 2.5, 1.2])
_AGE_BANDS = {"Young": (18, 34), "Mid-age": (35, 54), "Senior": (55, 79)}
_INCOME_BANDS = {"Low": (12.0, 30.0), "Mild": (30.0, 70.0), "High": (70.0, 150.0)}
_GENDER_SHARE = {"Female": 0.8, "Mixed": 0.5, "Male": 0.2}

# shared law and group deviations: columns (intercept, age, income, female, education, household)
_SHARED = np.array([0.0, 0.5, 0.5, 0.0, 0.5, -0.3])
_STANDARD_CELLS = [  # age band, income band, gender mix, delta_g
    ("Young", "Low", "Female", [0.5, 0.0, 1.5, 1.5, -1.0, 0.5]),
    ("Young", "Mild", "Mixed", [1.0, 1.0, 0.0, -1.5, 1.0, 1.0]),
    ("Young", "High", "Male", [1.0, 0.0, -1.0, 0.5, 0.5, -1.0]),
    ("Mid-age", "Low", "Male", [0.8, 0.5, 1.0, -1.0, 1.5, 0.0]),
    ("Mid-age", "Mild", "Mixed", [0.5, -1.0, 0.5, 1.0, -1.5, 1.5]),
    ("Mid-age", "High", "Female", [0.0, 1.0, -0.5, 1.5, 0.0, -1.5]),
    ("Senior", "Low", "Mixed", [0.5, -0.5, 0.0, -1.5, -0.5, 1.0]),
    ("Senior", "Mild", "Female", [-0.5, 0.0, 1.5, 0.5, 1.0, -1.0]),
    ("Senior", "High", "Male", [-2.2, 1.0, 0.0, -0.5, -1.0, 0.5]),
]
# the document's five training groups (its neurons 1..5) and subset sizes 20/30/10/20/20
DOCUMENT_GROUPS = ("Young - Low Income (Female)", "Young - Mild Income (Mixed)",
                   "Senior - High Income (Male)", "Mid-age - Mild Income (Mixed)",
                   "Senior - Mild Income (Female)")
DOCUMENT_SIZES = (20, 30, 10, 20, 20)
CSV_PATH = Path(__file__).resolve().parents[2] / "data" / "demographics.csv"


@dataclass(frozen=True)
class World:
    """A population: one row per group (name, band limits, share of women, logistic law)."""

    groups: pd.DataFrame  # columns: group, age_band, income_band, age_lo, age_hi, inc_lo, inc_hi, p_female
    coef: np.ndarray      # (n_groups, 1 + len(FEATURES)): intercept then slopes on z

    @property
    def names(self) -> list[str]:
        return list(self.groups["group"])

    def index(self, names: Sequence[str]) -> list[int]:
        """Group indices of ``names``; unknown names raise with the list of valid ones."""
        lookup = {n: i for i, n in enumerate(self.names)}
        bad = [n for n in names if n not in lookup]
        if bad:
            raise KeyError(f"unknown group(s) {bad}; this world has {self.names}")
        return [lookup[n] for n in names]

    def law(self) -> pd.DataFrame:
        """The groups' logistic coefficients as a readable table."""
        cols = ["intercept"] + [f"w_{f}" for f in FEATURES]
        return pd.concat([self.groups[["group"]].reset_index(drop=True),
                          pd.DataFrame(self.coef, columns=cols)], axis=1)


def standard_world(heterogeneity: float = 1.0) -> World:
    """The 3 x 3 age x income world of the chapter (five groups train neurons, four are OOD)."""
    if heterogeneity < 0:
        raise ValueError(f"heterogeneity must be >= 0, got {heterogeneity}")
    rows, coef = [], []
    for age, inc, mix, delta in _STANDARD_CELLS:
        (a_lo, a_hi), (i_lo, i_hi) = _AGE_BANDS[age], _INCOME_BANDS[inc]
        rows.append(dict(group=f"{age} - {inc} Income ({mix})", age_band=age, income_band=inc,
                         age_lo=a_lo, age_hi=a_hi, inc_lo=i_lo, inc_hi=i_hi,
                         p_female=_GENDER_SHARE[mix]))
        coef.append(_SHARED + heterogeneity * np.asarray(delta, dtype=float))
    return World(pd.DataFrame(rows), np.array(coef))


def grid_world(n_groups: int, *, heterogeneity: float = 1.0, seed: int = 0) -> World:
    """``n_groups`` cells of a finer age x income grid with random deviations ``delta_g ~ N(0, 1)``.

    The grid has ``ceil(sqrt(n))`` age bands over 18-79 and enough income bands over 12-150 k$;
    the first ``n_groups`` cells (row-major) are used. Coefficients depend on ``seed`` only.
    """
    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups}")
    n_age = int(np.ceil(np.sqrt(n_groups)))
    n_inc = int(np.ceil(n_groups / n_age))
    a_edges = np.linspace(18, 80, n_age + 1)
    i_edges = np.linspace(12.0, 150.0, n_inc + 1)
    rng = np.random.default_rng(np.random.SeedSequence([seed, n_groups, 7]))
    rows = []
    for g in range(n_groups):
        a, i = divmod(g, n_inc)
        rows.append(dict(group=f"cell {g}", age_band=f"A{a}", income_band=f"I{i}",
                         age_lo=a_edges[a], age_hi=a_edges[a + 1], inc_lo=i_edges[i],
                         inc_hi=i_edges[i + 1], p_female=0.5))
    coef = _SHARED + heterogeneity * rng.standard_normal((n_groups, _SHARED.size))
    return World(pd.DataFrame(rows), coef)


def sample(world: World, counts: Sequence[int] | dict, seed: int) -> pd.DataFrame:
    """Draw ``counts[g]`` people of each group ``g`` (a list over all groups, or ``{name: count}``).

    Rows come grouped in world order with a running ``id``. Integer bands (standard world) give
    integer ages; income is rounded to 0.1 k$. Deterministic in ``seed`` (numpy PCG64).
    """
    if isinstance(counts, dict):
        c = np.zeros(len(world.names), dtype=np.int64)
        c[world.index(list(counts))] = list(counts.values())
    else:
        c = np.asarray(counts, dtype=np.int64)
        if c.shape != (len(world.names),):
            raise ValueError(f"counts needs one entry per group ({len(world.names)}), got shape {c.shape}")
    if (c < 0).any():
        raise ValueError(f"counts must be >= 0, got {c.tolist()}")
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(len(c)), c)                      # (N,) group index per row
    G = world.groups
    a_lo, a_hi = G["age_lo"].to_numpy(float)[g], G["age_hi"].to_numpy(float)[g]
    integer_ages = all(float(v).is_integer() for v in G["age_lo"]) and all(float(v).is_integer() for v in G["age_hi"])
    if integer_ages:
        age = rng.integers(a_lo.astype(np.int64), a_hi.astype(np.int64) + 1).astype(float)
    else:
        age = np.floor(rng.uniform(a_lo, a_hi))
    income = np.round(rng.uniform(G["inc_lo"].to_numpy(float)[g], G["inc_hi"].to_numpy(float)[g]), 1)
    female = (rng.random(g.size) < G["p_female"].to_numpy(float)[g]).astype(np.int64)
    education = np.clip(np.round(rng.normal(10 + income / 20, 2.0)), 8, 20).astype(np.int64)
    household = 1 + rng.poisson(0.5 + 1.5 * np.exp(-((age - 45) / 12) ** 2))
    df = pd.DataFrame({"id": np.arange(g.size), "group": G["group"].to_numpy()[g],
                       "age_band": G["age_band"].to_numpy()[g], "income_band": G["income_band"].to_numpy()[g],
                       "age": age.astype(np.int64), "income": income, "female": female,
                       "education": education, "household": household.astype(np.int64)})
    z = features(df).double().numpy()                        # (N, 5)
    eta = world.coef[g, 0] + (z * world.coef[g, 1:]).sum(1)  # (N,)
    df["responded"] = (rng.random(g.size) < 1 / (1 + np.exp(-eta))).astype(np.int64)
    return df


def document_dataset(seed: int = 0, heterogeneity: float = 1.0,
                     sizes: Sequence[int] = DOCUMENT_SIZES) -> pd.DataFrame:
    """The document's 100 observations: the five training groups with 20/30/10/20/20 people."""
    world = standard_world(heterogeneity)
    if len(sizes) != len(DOCUMENT_GROUPS):
        raise ValueError(f"sizes needs {len(DOCUMENT_GROUPS)} entries (one per training group), got {len(sizes)}")
    return sample(world, dict(zip(DOCUMENT_GROUPS, sizes)), seed)


def features(df: pd.DataFrame, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standardised inputs ``z = (x - centre) / scale`` of shape (N, 5), columns :data:`FEATURES`."""
    missing = [f for f in FEATURES if f not in df.columns]
    if missing:
        raise KeyError(f"data frame lacks feature column(s) {missing}; expected {list(FEATURES)}")
    x = df[list(FEATURES)].to_numpy(dtype=np.float64)
    return torch.as_tensor((x - _CENTRE) / _SCALE, dtype=dtype)


def targets(df: pd.DataFrame, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 0/1 target ``responded`` as a tensor of shape (N,)."""
    return torch.tensor(df["responded"].to_numpy(), dtype=dtype)


_COLUMNS = ["id", "group", "age_band", "income_band", "age", "income", "female", "education",
            "household", "responded"]


def to_csv_text(df: pd.DataFrame) -> str:
    """Canonical CSV text (fixed column order, ``income`` with one decimal, ``\\n`` line ends)."""
    lines = [",".join(_COLUMNS)]
    for r in df[_COLUMNS].itertuples(index=False):
        lines.append(f"{r.id},{r.group},{r.age_band},{r.income_band},{r.age},{r.income:.1f},"
                     f"{r.female},{r.education},{r.household},{r.responded}")
    return "\n".join(lines) + "\n"


def write_csv(df: pd.DataFrame, path: str | Path = CSV_PATH) -> Path:
    path = Path(path)
    path.write_text(to_csv_text(df), encoding="utf-8", newline="")
    return path


def read_csv(path: str | Path = CSV_PATH) -> pd.DataFrame:
    """Read a CSV written by :func:`write_csv`; a missing file says how to regenerate it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; regenerate it with "
                                "mpnn.data.demographics.write_csv(document_dataset(0), path)")
    return pd.read_csv(path)
