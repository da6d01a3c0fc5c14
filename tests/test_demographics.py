"""The synthetic demographic generator: shipped CSV reproduced bit for bit, stated laws obeyed."""
import numpy as np
import pytest
import torch

from mpnn.data import demographics as D


def test_shipped_csv_is_reproduced_bit_for_bit():
    shipped = D.CSV_PATH.read_bytes()
    assert D.to_csv_text(D.document_dataset(0)).encode("utf-8") == shipped
    back = D.read_csv()
    assert len(back) == 100 and list(back.columns)[:2] == ["id", "group"]


def test_document_subsets_are_20_30_10_20_20():
    df = D.document_dataset(0)
    sizes = df.groupby("group", sort=False).size()
    assert list(sizes.index) == [n for n in D.standard_world().names if n in D.DOCUMENT_GROUPS]
    assert dict(sizes) == dict(zip(D.DOCUMENT_GROUPS, D.DOCUMENT_SIZES))
    assert "Mid-age - Mild Income (Mixed)" in D.DOCUMENT_GROUPS


def test_features_respect_bands_and_seed():
    w = D.standard_world()
    df = D.sample(w, [30] * 9, seed=5)
    for _, g in w.groups.iterrows():
        rows = df[df.group == g.group]
        assert rows.age.between(g.age_lo, g.age_hi).all()
        assert rows.income.between(g.inc_lo, g.inc_hi).all()
    assert df.education.between(8, 20).all() and (df.household >= 1).all()
    assert D.sample(w, [30] * 9, seed=5).equals(df)
    assert not D.sample(w, [30] * 9, seed=6).equals(df)
    z = D.features(df)
    assert torch.allclose(z[:, 0], torch.tensor((df.age.to_numpy() - 45.0) / 15.0, dtype=torch.float32))


def test_response_rate_follows_the_stated_logistic_law():
    # empirical response rate of one group vs the mean of sigmoid(b_g + z . w_g) over its people
    w = D.standard_world()
    df = D.sample(w, {"Mid-age - Mild Income (Mixed)": 20000}, seed=1)
    gi = w.index(["Mid-age - Mild Income (Mixed)"])[0]
    z = D.features(df).double().numpy()
    p = 1 / (1 + np.exp(-(w.coef[gi, 0] + z @ w.coef[gi, 1:])))
    assert abs(df.responded.mean() - p.mean()) < 0.015          # ~4.5 binomial standard errors


def test_heterogeneity_zero_gives_one_law():
    w = D.standard_world(heterogeneity=0.0)
    assert np.allclose(w.coef, w.coef[0])
    g = D.grid_world(1000, seed=3)
    assert len(g.names) == 1000 and g.coef.shape == (1000, 6)
    df = D.sample(g, np.full(1000, 2), seed=0)
    assert len(df) == 2000 and df.age.between(18, 80).all()


def test_bad_input_errors():
    w = D.standard_world()
    with pytest.raises(KeyError, match="unknown group"):
        D.sample(w, {"Teen - Rich": 3}, seed=0)
    with pytest.raises(ValueError, match="one entry per group"):
        D.sample(w, [1, 2], seed=0)
    with pytest.raises(ValueError, match="heterogeneity"):
        D.standard_world(-1)
