"""Early exits: batched inference that drops exited samples vs the full network.

``ratio_to_early_exit`` of the ``full`` variant is the measured speed-up; ``predicted_speedup`` (FLOPs)
is stored with it, so measured / predicted is the fraction of the FLOP saving that turns into time.
Block 1 and exit 1 run as the book runs them: the compiled per-image kernel (:mod:`mpnn.early_exit.stage1_kernel`)
where it can serve and measures faster on this machine (:func:`mpnn.early_exit.compiled_stage1_wins`); the
``-torch-block1`` variants run the same two calls on the torch path
(:func:`mpnn.infra.native.disabled`), so the ratio of ``full-torch-block1`` to ``early_exit-torch-block1``
is the speed-up without the kernel, in the same run.
The threshold is set to the entropy quantile that makes exactly ``exit_fraction`` of the batch leave
at the first exit, so the case does not need a trained model.

``flops`` (useful FLOPs of one call) come from the model's own counts (:func:`mpnn.early_exit.exit_costs`,
:func:`mpnn.early_exit.full_cost`: 2 FLOPs per multiply-add of every Conv2d and Linear, bias, ReLU, pooling
and the entropy not counted): ``full`` is ``batch * full_cost``; ``early_exit`` is what it computes at that
exit fraction, ``sum_i n_i * cost_i`` with ``n_i`` the samples leaving at exit ``i``. The fused stage-1
kernel's zero taps (its 6x6 phase windows, :func:`mpnn.early_exit.phase_weights`) are not useful FLOPs.
"""
import torch

from mpnn.infra import native
from mpnn.runtime.bench import case
from mpnn.early_exit import (EarlyExitNet, early_exit_predict, exit_costs, full_cost, normalised_entropy,
                             predicted_speedup)


@case("early_exit/batched-inference", group="early_exits", params={"exit_fraction": [0.5, 0.9]})
def batched_inference(exit_fraction, quick):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = EarlyExitNet().eval()
    x = torch.randn(500 if quick else 4000, 1, 28, 28, generator=g)
    with torch.no_grad():
        h = normalised_entropy(model(x)[0])
    threshold = float(torch.quantile(h.double(), exit_fraction)) + 1e-12
    frac = torch.tensor([exit_fraction, 1 - exit_fraction])
    n_exit = torch.bincount(early_exit_predict(model, x, threshold).exit_index, minlength=model.n_exits)
    skipping, full_flops = float((n_exit.double() * exit_costs(model)).sum()), float(len(x) * full_cost(model))
    flops = {"early_exit": skipping, "full": full_flops,
             "early_exit-torch-block1": skipping, "full-torch-block1": full_flops}
    extra = {"predicted_speedup": float(predicted_speedup(model, frac)), "batch": x.shape[0], "flops": flops,
             "book_vs_torch": {"book": "early_exit", "torch": ["early_exit-torch-block1"]}}

    def full():
        with torch.no_grad():
            model.forward_full(x)

    def torch_path(fn):
        def call():
            with native.disabled():
                fn()
        return call

    skip = lambda: early_exit_predict(model, x, threshold)  # noqa: E731
    return {"early_exit": skip, "full": full, "early_exit-torch-block1": torch_path(skip),
            "full-torch-block1": torch_path(full)}, extra
