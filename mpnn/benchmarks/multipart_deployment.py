"""Multi-part deployment: distributed step time against the single-process step, as ratios.

Each grid point starts one group of ``world_size`` ranks on 127.0.0.1 (gloo, one thread per rank)
that times every strategy and the single-process ``nn.Sequential`` step on rank 0 interleaved, round
by round (:func:`mpnn.experiments.multipart_deployment.step_times`). The harness times the single-process step in
this process as the variant; the distributed medians and ``ratio_<strategy>`` = median over rounds of
distributed / single-process step of the same round (both measured in worker processes, like for
like) are stored as extra numbers.

FLOPs (``flops`` extra) of the single-process step: forward ``2 B sum(n_i n_{i+1})`` for the
linear layers, backward twice that (input and weight gradients), so ``6 B sum(n_i n_{i+1})``.
"""
import torch
import torch.nn.functional as F

from mpnn.runtime.bench import case
from mpnn.infra.determinism import cpu_threads
from mpnn.deploy import STRATEGIES, init_params, reference_model
from mpnn.experiments.multipart_deployment import step_times


@case("deploy/step-time", group="multipart_deployment", params={"world_size": [2, 4]}, repeats=3)
def step_time(world_size, quick):
    sizes = [784, 128, 128, 64, 10] if quick else [784, 512, 512, 256, 10]
    bsz = 32 if quick else 128
    data = {"kind": "synthetic", "n": 512, "seed": 0}
    df = step_times(sizes, [world_size], list(STRATEGIES), data=data, batch_size=bsz, lr=0.01,
                    warmup=2, repeats=5 if quick else 20)
    med = df.groupby("strategy").agg(step_s=("step_s", "median"), ratio=("ratio_to_single", "median"),
                                     bytes=("bytes", "first"))
    extra = {"sizes": sizes, "batch": bsz, "single_step_s": float(med.loc["single process", "step_s"])}
    for strategy, row in med.drop(index="single process").iterrows():
        extra[f"step_s_{strategy}"] = float(row.step_s)
        extra[f"ratio_{strategy}"] = float(row.ratio)
        extra[f"bytes_{strategy}"] = int(row.bytes)
    net = reference_model(init_params(sizes, 0))
    x, y = torch.randn(bsz, sizes[0]), torch.randint(0, sizes[-1], (bsz,))

    def single_process():   # one thread, like every rank
        with cpu_threads(1):
            net.zero_grad()
            F.cross_entropy(net(x), y).backward()

    extra["flops"] = 6.0 * bsz * sum(a * b for a, b in zip(sizes, sizes[1:]))
    return {"single_process": single_process}, extra
