"""mpnn.infra.train.fusable: when the fused Adam/AdamW kernel applies, and that it then trains like the plain one."""
import pytest
import torch

from mpnn.infra.train import fusable


def test_float_parameters_on_the_cpu_are_fusable():
    assert fusable(torch.nn.Linear(3, 2))
    assert fusable(torch.nn.Linear(3, 2).double())
    assert fusable(torch.nn.Sequential())          # no parameters: nothing stands in the way


def test_other_dtypes_or_devices_are_not():
    assert not fusable(torch.nn.Linear(3, 2).half())
    assert not fusable(torch.nn.Linear(3, 2).to(torch.bfloat16))
    assert not fusable(torch.nn.Linear(3, 2, device="meta"))
    mixed = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2).half())
    assert not fusable(mixed)                     # one parameter is enough to rule it out


@pytest.mark.parametrize("optimizer", [torch.optim.Adam, torch.optim.AdamW])
def test_where_fusable_the_fused_kernel_matches_the_per_tensor_loop(optimizer):
    torch.manual_seed(0)
    fused_model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    plain_model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    plain_model.load_state_dict(fused_model.state_dict())
    assert fusable(fused_model)
    fused = optimizer(fused_model.parameters(), lr=1e-2, fused=fusable(fused_model))
    plain = optimizer(plain_model.parameters(), lr=1e-2, foreach=False, fused=False)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    y = x.sum(1, keepdim=True)
    for _ in range(5):
        for model, opt in ((fused_model, fused), (plain_model, plain)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    for p, q in zip(fused_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
