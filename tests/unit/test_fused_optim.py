"""ATFTModule.configure_optimizers: torch's fused AdamW when the parameters are on CUDA, the default (unchanged)
AdamW elsewhere. The CUDA case runs for real where a GPU is present (benchmarks/gpu_check.sh) and through a
parameter that reports `is_cuda` on the CPU box."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from gogooku3.config.compose import load_config, to_dict
from gogooku3.training.fit import ATFTModule

torch.set_num_threads(1)


def _module() -> ATFTModule:
    cfg = load_config(
        ["model.window=10", "model.hidden=16", "model.head_hidden=8", "model.graph.window=10", "model.graph.min_obs=5"]
    )
    mc = to_dict(cfg.model)
    for k in ("name", "expected_params"):
        mc.pop(k)
    mc.update(n_features=4, horizons=[1, 5])
    tc = cfg.train
    module = ATFTModule(
        mc, to_dict(tc.loss), {k: getattr(tc, k) for k in ("lr", "weight_decay", "warmup_steps", "min_lr_ratio")}
    )
    module.trainer = SimpleNamespace(estimated_stepping_batches=100)
    return module


def test_cpu_optimizer_is_torchs_default_adamw():
    module = _module()
    conf = module.configure_optimizers()
    opt = conf["optimizer"]
    assert isinstance(opt, torch.optim.AdamW)
    default = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=module.optim_cfg["lr"]).defaults
    for key in ("fused", "foreach", "capturable", "differentiable", "amsgrad", "betas", "eps", "lr"):
        assert opt.defaults[key] == default[key], key
    assert not opt.defaults["fused"]
    groups = opt.param_groups
    assert [g["weight_decay"] for g in groups] == [module.optim_cfg["weight_decay"], 0.0]
    assert sum(len(g["params"]) for g in groups) == len(list(module.parameters()))
    # one step moves the weights
    p = next(iter(groups[0]["params"]))
    before = p.detach().clone()
    p.grad = torch.ones_like(p)
    opt.step()
    conf["lr_scheduler"]["scheduler"].step()
    assert not torch.equal(before, p.detach())


class _OnCuda(torch.nn.Parameter):
    """A CPU parameter that says it is on CUDA (what configure_optimizers reads)."""

    @property
    def is_cuda(self) -> bool:
        return True


def test_cuda_parameters_get_fused_adamw(monkeypatch):
    module = _module()
    named = [(n, _OnCuda(p.detach().clone())) for n, p in module.named_parameters()]
    monkeypatch.setattr(module, "named_parameters", lambda *a, **k: iter(named))
    seen = {}
    adamw = torch.optim.AdamW

    def spy(groups, **kwargs):
        seen.update(kwargs)
        return adamw([torch.nn.Parameter(torch.zeros(1))], lr=kwargs["lr"])  # CPU stand-in

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    module.configure_optimizers()
    assert seen.get("fused") is True
    # one CPU parameter among CUDA ones: no fused kernel (it needs every parameter on the device)
    named[-1] = (named[-1][0], torch.nn.Parameter(named[-1][1].detach().clone()))
    seen.clear()
    module.configure_optimizers()
    assert "fused" not in seen


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_real_cuda_module_uses_fused_adamw():
    module = _module().cuda()
    opt = module.configure_optimizers()["optimizer"]
    assert opt.defaults["fused"] is True
    for g in opt.param_groups:
        for p in g["params"]:
            p.grad = torch.ones_like(p)
    opt.step()
    torch.cuda.synchronize()
