"""Compositional MNIST: the paper's metrics, its conv towers, MLP towers at CPU scale, summaries and figures."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from mpnn import dynamics as D
from mpnn.data.cmnist import (
    CMNIST,
    N_COMPOSITIONAL,
    N_NONCOMPOSITIONAL,
    NONCOMP_SCALE,
    compositional_targets,
    noncompositional_targets,
)
from mpnn.infra import train as T
from mpnn.infra.determinism import spawn_seeds
from mpnn.runtime import plots, stats
from mpnn.towers import ConvTowers, TowerMLP, init_normal, init_tower_mlp

from .formats import ci_text
from .linear import ACCURACIES, COMP_CHANCE, METRIC_NAMES, METRICS


def cmnist_targets(digits: torch.Tensor, noncomp_scale: float = NONCOMP_SCALE) -> torch.Tensor:
    """The 1030 regression targets: compositional (30) then non-compositional (1000, ``noncomp_scale``
    times a one-hot; the paper's 10), (n, 1030)."""
    return torch.cat([compositional_targets(digits), noncompositional_targets(digits, noncomp_scale)], 1)


def squared_error(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The paper's loss: per-image sum of squared errors over all outputs, averaged over the batch."""
    return (out - y).pow(2).sum(1).mean()


def metrics(out: torch.Tensor, comp: torch.Tensor, noncomp: torch.Tensor, digits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image metric sums over a batch (divide by n afterwards): the paper's normalised errors
    ``SSE_comp / 3`` and ``SSE_noncomp / 100``, per-digit accuracy (argmax of each 10-slot) and
    whole-number accuracy read from the compositional and from the non-compositional outputs."""
    oc, on = out[:, :N_COMPOSITIONAL], out[:, N_COMPOSITIONAL:]
    pred_digits = oc.unflatten(1, (3, 10)).argmax(-1)                       # (B, 3)
    right = pred_digits == digits
    number = digits @ torch.tensor([100, 10, 1], device=digits.device)
    return {"comp_error": (oc - comp).pow(2).sum(1).sum() / 3,
            "noncomp_error": (on - noncomp).pow(2).sum(1).sum() / NONCOMP_SCALE ** 2,
            "digit_acc": right.float().mean(1).sum(),
            "number_acc_comp": right.all(1).float().sum(),
            "number_acc_noncomp": (on.argmax(1) == number).float().sum()}


PAPER_KERNELS = ((9, 27), (7, 21), (5, 15))     # valid convolutions: 28 x 84 -> 20 x 58 -> 14 x 38 -> 10 x 24


IMAGE_HW = (28, 84)


def make_model(kind: str, *, dense_channels: int = 32, split_channels: int = 16) -> ConvTowers:
    """``"dense"``: one 32-channel tower -> 1030; ``"split"``: 16-channel towers -> 30 and -> 1000."""
    if kind == "dense":
        outputs = (N_COMPOSITIONAL + N_NONCOMPOSITIONAL,)
    elif kind == "split":
        outputs = (N_COMPOSITIONAL, N_NONCOMPOSITIONAL)
    else:
        raise ValueError(f"unknown CMNIST model {kind!r}; choose 'dense' or 'split'")
    channels = dense_channels if kind == "dense" else split_channels
    return ConvTowers(channels=channels, outputs=outputs, kernels=PAPER_KERNELS, input_hw=IMAGE_HW)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: CMNIST, *, batch_size: int = 500, device="cpu") -> dict[str, float]:
    """:func:`metrics` of ``model`` on ``data``, means over images."""
    totals: dict[str, float] = {}
    for start in range(0, len(data), batch_size):
        idx = slice(start, start + batch_size)
        comp, noncomp = data.targets(idx)
        m = metrics(model(data.inputs(idx).to(device)), comp.to(device), noncomp.to(device), data.digits[idx].to(device))
        for k, v in m.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    return {k: v / len(data) for k, v in totals.items()}


def train_cmnist(kind: str, train: CMNIST, test: CMNIST, *, seeds: Sequence[int], epochs: int, lr: float = 2e-3,
                 batch_size: int = 16, init_std: float = 0.01, eval_train: CMNIST | None = None, device="cpu",
                 progress: str | None = None, noncomp_scale: float = NONCOMP_SCALE
                 ) -> tuple[ConvTowers, list[dict], T.History]:
    """Train one paper model by plain SGD (:func:`mpnn.infra.train.fit`); ``seeds[0]`` orders the mini-batches,
    ``seeds[1:]`` initialise the towers (N(0, init_std^2) weights and biases).

    Evaluates at epoch 0 and after every epoch on ``eval_train`` (default: ``train``) and ``test``;
    returns the model, rows ``{model, epoch, split, metrics...}`` and the training history.
    ``noncomp_scale`` scales the non-compositional training target (the metrics keep the paper's).
    """
    if lr <= 0:
        raise ValueError(f"need lr > 0, got {lr}")
    model = make_model(kind)
    if len(seeds) != 1 + len(model.outputs):
        raise ValueError(f"{kind}: need {1 + len(model.outputs)} seeds (data order + one per tower), got {len(seeds)}")
    init_normal(model, seeds[1:], init_std)
    model.to(device)
    splits = {"train": train if eval_train is None else eval_train, "test": test}
    log = lambda epoch: {split: evaluate(model, data, device=device) for split, data in splits.items()}
    start = {"epoch": 0} | log(0)
    x, y = train.inputs().to(device), cmnist_targets(train.digits, noncomp_scale).to(device)
    history = T.fit(model, lambda batch, step: squared_error(model(batch[0]), batch[1]), (x, y),
                    torch.optim.SGD(model.parameters(), lr=lr), epochs=epochs, batch_size=batch_size,
                    seed=int(seeds[0]), evaluate=log, progress=progress)
    rows = [{"model": kind, "epoch": e["epoch"], "split": split} | e[split]
            for e in [start, *history.evals] for split in splits]
    return model, rows, history


@dataclass
class PaperRun:
    """The paper-scale experiment: rows of :func:`train_cmnist` (with ``run``), seconds per epoch
    (evaluations included) per model, and the sizes used."""
    rows: pd.DataFrame
    seconds_per_epoch: dict[str, list[float]]
    n_train: int
    n_test: int


def train_paper_scale(train: CMNIST, test: CMNIST, *, seed: int, n_seeds: int, epochs: int, train_size: int,
                      test_size: int, eval_train_size: int, lr: float, batch_size: int, init_std: float,
                      device, noncomp_scale: float = NONCOMP_SCALE) -> PaperRun:
    """Dense and split conv towers for ``n_seeds`` seeds on the first ``train_size`` / ``test_size`` images.

    Per seed one child seed each for the data order and for every tower; the dense model shares the
    split model's order seed and first tower seed.
    """
    cm_train = train.subset(min(train_size, len(train)))
    cm_test = test.subset(min(test_size, len(test)))
    cm_eval = cm_train.subset(min(eval_train_size, len(cm_train)))
    rows, seconds = [], {"dense": [], "split": []}
    for i, s in enumerate(spawn_seeds(seed, n_seeds)):
        sub = spawn_seeds(s, 3)
        for kind, seeds_k in (("dense", sub[:2]), ("split", sub)):
            _, r, history = train_cmnist(kind, cm_train, cm_test, seeds=seeds_k, epochs=epochs, lr=lr,
                                         batch_size=batch_size, init_std=init_std, eval_train=cm_eval,
                                         device=device, progress=f"CMNIST {kind}, seed {i + 1} of {n_seeds}",
                                         noncomp_scale=noncomp_scale)
            rows += [row | {"run": i} for row in r]
            seconds[kind].append(history.seconds / epochs)
    return PaperRun(pd.DataFrame(rows), seconds, len(cm_train), len(cm_test))


def sgd_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    """One SGD step of a paper model on the :func:`squared_error` loss."""
    loss = squared_error(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def seconds_per_step(kind: str, *, steps: int = 3, batch_size: int = 16, lr: float = 2e-3,
                     init_std: float = 0.01, device="cpu") -> float:
    """Median wall time of one SGD step of the paper's ``kind`` model on random 28 x 84 images
    (after one untimed warm-up step): what an epoch of the paper costs on ``device``."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"need steps >= 1 and batch_size >= 1, got {steps}, {batch_size}")
    model = make_model(kind)
    init_normal(model, list(range(len(model.outputs))), init_std)
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, 1, *IMAGE_HW, generator=g).to(device)
    y = cmnist_targets(torch.randint(0, 10, (batch_size, 3), generator=g)).to(device)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        sgd_step(model, opt, x, y)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def paper_step_seconds(*, batch_size: int, lr: float, init_std: float, device) -> dict[str, float]:
    """One timed SGD step of each paper model (one thread), in seconds."""
    with D.single_thread(device):
        return {k: seconds_per_step(k, steps=1, batch_size=batch_size, lr=lr, init_std=init_std, device=device)
                for k in ("dense", "split")}


def paper_hours(step_seconds: dict[str, float], batch_size: int, *, images: int = 20000, epochs: int = 300,
                seeds: int = 10) -> float:
    """Hours the paper's experiment (both models, ``epochs`` x ``seeds``) takes at these step times."""
    return sum(step_seconds.values()) * images / batch_size * epochs * seeds / 3600


def mlp_towers(kind: str, hidden: int) -> tuple[tuple[int, slice], ...]:
    """``((hidden units, output slice), ...)`` per tower: ``dense`` one tower of ``hidden`` units to
    all 1030 outputs; ``split`` two towers of ``hidden // 2`` units, to the 30 and to the 1000 outputs."""
    n_out = N_COMPOSITIONAL + N_NONCOMPOSITIONAL
    if kind == "dense":
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        return ((hidden, slice(0, n_out)),)
    if kind == "split":
        if hidden < 2 or hidden % 2:
            raise ValueError(f"split needs an even hidden width >= 2 (two equal towers), got {hidden}")
        return ((hidden // 2, slice(0, N_COMPOSITIONAL)), (hidden // 2, slice(N_COMPOSITIONAL, n_out)))
    raise ValueError(f"unknown CMNIST model {kind!r}; choose 'dense' or 'split'")


def pooled_inputs(train: CMNIST, test: CMNIST, factor: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool both splits by ``factor`` and flatten: (n, 28/f * 84/f) float32, standardised
    with the training set's per-pixel mean and overall standard deviation."""
    if factor < 1 or 28 % factor:
        raise ValueError(f"factor must divide 28, got {factor}")
    pool = lambda cm: torch.nn.functional.avg_pool2d(cm.inputs(), factor).flatten(1)
    xtr, xte = pool(train), pool(test)
    mu, sd = xtr.mean(0), xtr.std()
    return (xtr - mu) / sd, (xte - mu) / sd


@torch.no_grad()
def evaluate_runs(model: TowerMLP, x: torch.Tensor, digits: torch.Tensor, *, batch_size: int = 2000
                  ) -> dict[str, torch.Tensor]:
    """The :func:`metrics` of every run at once: ``{name: (R,)}`` means over images."""
    comp_all, non_all = compositional_targets(digits), noncompositional_targets(digits)
    totals: dict[str, torch.Tensor] = {}
    for start in range(0, x.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        _, out = model.forward(x[sl])
        for r in range(out.shape[0]):
            m = metrics(out[r], comp_all[sl].to(out), non_all[sl].to(out), digits[sl].to(out.device))
            for k, v in m.items():
                totals.setdefault(k, torch.zeros(out.shape[0], dtype=torch.float64))[r] += float(v)
    return {k: v / x.shape[0] for k, v in totals.items()}


def train_tower_mlp(kind: str, x_train: torch.Tensor, digits_train: torch.Tensor, *, init_seeds: Sequence[int],
                    order_seeds: Sequence[int], epochs: int, lr: float, batch_size: int = 32, hidden: int = 128,
                    out_std: float = 0.1, evals: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
                    eval_every: int = 1, noncomp_scales: Sequence[float] | None = None, device="cpu"
                    ) -> tuple[TowerMLP, list[dict]]:
    """Train ``len(init_seeds)`` runs of ``kind`` together by plain SGD (:meth:`TowerMLP.sgd_step`).

    Run ``r`` starts from ``init_seeds[r]`` and visits the training images in the order drawn from
    ``order_seeds[r]`` (:func:`mpnn.infra.train.permutations`: a fresh permutation every epoch; pass the
    same order seeds to both kinds for paired runs). ``evals`` maps a split name to ``(x, digits)``;
    they are evaluated at epoch 0, every ``eval_every`` epochs and at the end. Returns the model and
    rows ``{model, run, epoch, split, metrics...}``. ``noncomp_scales`` (one per run, default the
    paper's 10 for all) sets each run's non-compositional target ``scale * onehot(number)``
    (:func:`mpnn.data.cmnist.compositional_share`); the metrics keep the paper's normalisation.
    """
    if noncomp_scales is not None and (len(noncomp_scales) != len(init_seeds) or min(noncomp_scales) < 0):
        raise ValueError(f"need one non-negative noncomp scale per run ({len(init_seeds)}), got {noncomp_scales}")
    if len(init_seeds) != len(order_seeds) or not init_seeds:
        raise ValueError(f"need one init and one order seed per run, got {len(init_seeds)} and {len(order_seeds)}")
    if epochs < 0 or lr <= 0 or batch_size < 1 or eval_every < 1:
        raise ValueError(f"need epochs >= 0, lr > 0, batch_size >= 1, eval_every >= 1; "
                         f"got {epochs}, {lr}, {batch_size}, {eval_every}")
    dev = torch.device(device)
    model = init_tower_mlp(mlp_towers(kind, hidden), x_train.shape[1], init_seeds, out_std=out_std, device=dev)
    x_train = x_train.to(dev, torch.float32)
    y_train = cmnist_targets(digits_train).to(dev)
    weight = None                                                   # per-run factor on the targets (R, 1, 1030)
    if noncomp_scales is not None:
        weight = torch.ones(len(init_seeds), 1, y_train.shape[1], device=dev)
        weight[:, 0, N_COMPOSITIONAL:] = torch.tensor([float(v) / NONCOMP_SCALE for v in noncomp_scales], device=dev)[:, None]
    evals = {k: (x.to(dev, torch.float32), d) for k, (x, d) in (evals or {}).items()}
    rows: list[dict] = []

    def log(epoch):
        for split, (x, d) in evals.items():
            m = evaluate_runs(model, x, d)
            rows.extend({"model": kind, "run": r, "epoch": epoch, "split": split}
                        | {k: float(v[r]) for k, v in m.items()} for r in range(len(init_seeds)))

    log(0)
    n = x_train.shape[0]
    for epoch, perm in enumerate(T.permutations(n, list(order_seeds), epochs, dev), start=1):   # (R, n)
        for start in range(0, n, batch_size):
            idx = perm[:, start:start + batch_size]
            model.sgd_step(x_train[idx], y_train[idx] if weight is None else y_train[idx] * weight, lr)
        if epoch % eval_every == 0 or epoch == epochs:
            log(epoch)
    return model, rows


@dataclass
class CPURun:
    """The CPU-scale experiment: evaluation rows of both models, seconds per model (all seeds), sizes."""
    rows: pd.DataFrame
    seconds: dict[str, float]
    n_train: int
    n_test: int
    n_inputs: int


def train_cpu_scale(train: CMNIST, test: CMNIST, *, seed: int, n_seeds: int, train_size: int, test_size: int,
                    eval_train_size: int, epochs: int, eval_every: int, lr: float, batch_size: int, hidden: int,
                    pool: int, out_std: float, device) -> CPURun:
    """Dense and split MLP towers, ``n_seeds`` paired seeds each (per seed: data order, dense init, split init)."""
    sub = [spawn_seeds(s, 3) for s in spawn_seeds(seed, n_seeds)]
    cpu_train = train.subset(min(train_size, len(train)))
    cpu_test = test.subset(min(test_size, len(test)))
    x_tr, x_te = pooled_inputs(cpu_train, cpu_test, pool)
    n_ev = min(eval_train_size, len(cpu_train))
    evals = {"train": (x_tr[:n_ev], cpu_train.digits[:n_ev]), "test": (x_te, cpu_test.digits)}
    rows, seconds = [], {}
    for j, kind in enumerate(tqdm(("dense", "split"), desc="CPU-scale CMNIST"), start=1):
        t0 = time.perf_counter()
        with D.single_thread(device):
            _, r = train_tower_mlp(kind, x_tr, cpu_train.digits, init_seeds=[s[j] for s in sub],
                                   order_seeds=[s[0] for s in sub], epochs=epochs, lr=lr, batch_size=batch_size,
                                   hidden=hidden, out_std=out_std, evals=evals, eval_every=eval_every, device=device)
        seconds[kind] = time.perf_counter() - t0
        rows += r
    return CPURun(pd.DataFrame(rows), seconds, len(cpu_train), len(cpu_test), x_tr.shape[1])


def error_curves(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% CI over runs of both normalised errors per model, split and epoch; ``curve``
    names model and split (one line each, so no band is drawn across train and test)."""
    long = rows.melt(id_vars=["model", "epoch", "split", "run"], value_vars=["comp_error", "noncomp_error"],
                     var_name="metric", value_name="error")
    curves = stats.summarise(long, ["model", "epoch", "split", "metric"], "error")
    return curves.assign(curve=curves.model + ", " + curves.split)


def figure_cmnist_errors(curves: pd.DataFrame, title: str):
    """Compositional error (with the chance level) next to the non-compositional error, over epochs."""
    curves = curves.rename(columns={"curve": "model, images"})
    panel = lambda metric: plots.line_ci(curves[curves.metric == metric], "epoch", color="model, images",
                                         title=METRIC_NAMES[metric], y_title="normalised error", width=220, height=200)
    comp = plots.with_rules(panel("comp_error"), y={f"chance {COMP_CHANCE:.2f}": COMP_CHANCE})
    return (comp | panel("noncomp_error")).properties(title=title)


def final_metrics_table(rows: pd.DataFrame, epoch: int, digits: int = 3) -> pd.DataFrame:
    """Every metric at ``epoch``, mean and 95% CI over runs, per model and split."""
    last = rows[rows.epoch == epoch]
    return pd.DataFrame([{"model": model, "split": split,
                          **{m: stats.fmt_ci(g[m].tolist(), digits, bounds=(0, 1) if m in ACCURACIES else None)
                             for m in METRICS}}
                         for (model, split), g in last.groupby(["model", "split"])])


def per_seed(rows: pd.DataFrame, model: str, epoch: int, split: str = "test", metric: str = "comp_error") -> pd.Series:
    """One metric of one model at one epoch, indexed by run (the pairing key)."""
    d = rows[(rows.model == model) & (rows.split == split) & (rows.epoch == epoch)]
    return d.set_index("run")[metric].sort_index()


@dataclass
class PairedComparison:
    """Split minus dense compositional test error, paired by seed: at the last epoch (``diff``, its
    mean and 95% CI) and the mean difference at every evaluated epoch."""
    split: pd.Series
    dense: pd.Series
    diff: list[float]
    mean: float
    low: float
    high: float
    by_epoch: dict[int, float]
    split_ahead_from: int | None
    dense_best_epoch: int


def paired_comparison(rows: pd.DataFrame, epochs: int) -> PairedComparison:
    """:class:`PairedComparison` of the CPU-scale rows; ``split_ahead_from``: the first epoch from
    which the split model stays lower; ``dense_best_epoch``: where the dense test error is lowest."""
    split, dense = per_seed(rows, "split", epochs), per_seed(rows, "dense", epochs)
    diff = (split - dense).tolist()                                   # paired: same seed, same data order
    by_epoch = {int(e): float((per_seed(rows, "split", e) - per_seed(rows, "dense", e)).mean())
                for e in sorted(rows.epoch.unique()) if e > 0}
    ahead = next((e for e in by_epoch if all(by_epoch[f] < 0 for f in by_epoch if f >= e)), None)
    best = min(by_epoch, key=lambda e: per_seed(rows, "dense", e).mean())
    return PairedComparison(split, dense, diff, *stats.mean_ci(diff), by_epoch, ahead, best)


def paired_report(rows: pd.DataFrame, cmp: PairedComparison, epochs: int) -> str:
    """The lines the chapter prints about the paired comparison and the dense model's memorising."""
    dense_at = lambda e, split="test", metric="comp_error": per_seed(rows, "dense", e, split, metric).mean()
    return "\n".join([
        f"test compositional error, split minus dense (paired, per seed): {ci_text(cmp.diff, signed=True)}, n={len(cmp.diff)}",
        "mean difference by epoch: " + ", ".join(f"{e}: {d:+.3f}" for e, d in cmp.by_epoch.items()),
        f"split lower from epoch {cmp.split_ahead_from} on; dense test compositional error: lowest at epoch "
        f"{cmp.dense_best_epoch} ({dense_at(cmp.dense_best_epoch):.3f}), {cmp.dense.mean():.3f} at epoch {epochs}; "
        f"dense non-compositional error at epoch {epochs}: train {dense_at(epochs, 'train', 'noncomp_error'):.3f}, "
        f"test {dense_at(epochs, metric='noncomp_error'):.3f}"])


def final_test_errors(rows: pd.DataFrame) -> tuple[list[float], list[float]]:
    """Compositional test error per run at the last epoch: (split, dense)."""
    last = rows[(rows.epoch == rows.epoch.max()) & (rows.split == "test")]
    return last[last.model == "split"].comp_error.tolist(), last[last.model == "dense"].comp_error.tolist()
