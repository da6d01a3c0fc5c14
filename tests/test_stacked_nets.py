"""mpnn.tagnet.stacked_nets: stacked blocks give back the modules' weights, and batched routed inference
equals each module's own forward."""
import pytest
import torch

from mpnn import tagnet
from mpnn.tagnet.stacked_nets import StackedNets
from mpnn.tagnet.stacked_sgd import StackedSGD

from test_tagnet import data


def G(seed):
    return torch.Generator().manual_seed(seed)


def test_blocks_round_trip_in_any_block_order():
    models = [tagnet.TagNet(generator=G(1)), tagnet.TagNet(offset=6, partitioned=False, generator=G(2)),
              tagnet.TagNet(hidden_fan_in=784, generator=G(3))]
    nets = StackedNets(models)
    for blocked in ([False] * 3, [True, False, True]):
        nets.order_blocks(blocked)
        assert nets.n_p == sum(blocked)
        for m, out in zip(models, nets.export()):
            for p, q in zip(m.parameters(), out.parameters()):
                assert torch.equal(p, q)
        assert torch.equal(nets.W1, torch.stack([m.hidden.weight.T for m in models]))
        assert torch.equal(nets.W2, torch.stack([m.out.weight for m in models]))
    assert nets.partitioned == [True, False, True] and len(nets.layouts) == 2


def test_batched_inference_matches_module():
    X, y = data()
    models = [tagnet.TagNet(generator=G(1)), tagnet.TagNet(partitioned=False, generator=G(2))]
    nets = StackedNets(models)
    tags = y % 2
    logits = nets.logits(X, tags)
    for i, m in enumerate(models):
        with torch.no_grad():
            assert torch.allclose(logits[i], m(X, tags=tags), atol=1e-5)
            assert torch.allclose(nets.logits(X, route="all")[i], m(X), atol=1e-5)
            assert torch.allclose(nets.hidden(X)[i], m.activations(X), atol=1e-5)
    moe = tagnet.TwoExpertMoE(generator=G(4))
    moe_nets = StackedNets([moe])
    with torch.no_grad():
        assert torch.allclose(moe_nets.logits(X, route="gate")[0], moe(X), atol=1e-5)
    assert torch.equal(moe_nets.gate_choice(X)[0], moe.expert(X))
    # a subset of the models gives exactly their rows of the full computation
    assert torch.allclose(nets.logits(X, tags, models=[1]), logits[1:], atol=1e-6)
    assert torch.equal(nets.accuracy(X, y, models=[1, 0]), nets.accuracy(X, y)[[1, 0]])
    with pytest.raises(ValueError, match="models must be indices"):
        nets.logits(X, tags, models=[2])
    with pytest.raises(ValueError, match="gate"):
        nets.logits(X, route="gate")


def test_accuracies_match_module_forward():
    X, y = data(150)
    models = [tagnet.TagNet(generator=G(1)), tagnet.TagNet(offset=6, partitioned=False, generator=G(2))]
    eng = StackedSGD(models, X, y)
    eng.fit(torch.stack([torch.arange(150), torch.arange(150)], 1))
    trained = eng.nets.export()
    router = torch.randint(0, 2, (2, 150), generator=G(0))
    acc = eng.nets.accuracies(X, y, {"oracle": "tag", "all": "all", "router": router}, chunk=64)
    for i, m in enumerate(trained):
        with torch.no_grad():
            ref = {"oracle": m(X, tags=y % 2), "all": m(X), "router": m(X, tags=router[i])}
        for name, logits in ref.items():
            assert float(acc[name][i]) == float((logits.argmax(-1) == y).float().mean()), name
    assert torch.equal(eng.nets.accuracy(X, y), acc["oracle"])


def test_correct_is_per_image_accuracy():
    X, y = data(90)
    nets = StackedNets([tagnet.TagNet(generator=G(s)) for s in (0, 1)])
    hits = nets.correct(X, y, {"t": "tag", "a": "all"}, chunk=40)
    for i, m in enumerate(nets.export()):
        with torch.no_grad():
            assert torch.equal(hits["t"][i], m(X, tags=y % 2).argmax(-1) == y)
            assert torch.equal(hits["a"][i], m(X).argmax(-1) == y)


def test_models_must_be_alike():
    with pytest.raises(ValueError, match="share"):
        StackedNets([tagnet.TagNet(), tagnet.TagNet(connectivity="full")])
    with pytest.raises(ValueError, match="at least one"):
        StackedNets([])
    with pytest.raises(ValueError, match="slope"):
        StackedNets([tagnet.TagNet(), tagnet.TagNet(slope=0.1)])
