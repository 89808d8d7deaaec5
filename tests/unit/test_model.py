"""ATFT-GAT-FAN: shapes, switches (FAN, GAT, quantile heads), monotone quantiles, sizes, overfitting a planted day."""

import dataclasses

import pytest
import torch

from gogooku3.config.compose import load_config
from gogooku3.evaluation.device_metrics import rank_ic
from gogooku3.model.atft_gat_fan import ATFTGATFAN, ATFTConfig
from gogooku3.model.fan import FAN
from gogooku3.model.losses import MultiHorizonLoss

torch.set_num_threads(1)
N, L, F = 40, 16, 7


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, L, F, generator=g)
    factor = torch.randn(L, 2, generator=g)
    load = torch.zeros(N, 2)
    load[: N // 2, 0] = 1.0
    load[N // 2 :, 1] = 1.0
    returns = 0.01 * (factor @ load.T).T + 0.002 * torch.randn(N, L, generator=g)  # two correlated blocks
    sector = (torch.arange(N) % 3).long()
    segment = (torch.arange(N) % 2).long()
    return x, sector, segment, returns


def _model(**kw) -> ATFTGATFAN:
    torch.manual_seed(0)
    base = dict(
        n_features=F,
        window=L,
        hidden=16,
        head_hidden=8,
        horizons=(1, 5),
        norm="fan",
        graph=dict(window=L, method="pearson", halflife=5, shrinkage=0.0, threshold=0.3, k=5, min_obs=5),
    )
    base.update(kw)
    return ATFTGATFAN(ATFTConfig.packaged(**base)).eval()


def test_output_shapes_and_finite():
    x, sec, seg, r = _inputs()
    out = _model()(x, sec, seg, r)
    assert out["point"].shape == (N, 2)
    assert out["quantiles"].shape == (N, 2, 5)
    assert out["feature_weights"].shape == (F,)
    assert torch.isfinite(out["point"]).all()
    assert torch.allclose(out["feature_weights"].sum(), torch.tensor(1.0), atol=1e-5)


def test_quantiles_monotone():
    x, sec, seg, r = _inputs(1)
    q = _model()(x * 10, sec, seg, r)["quantiles"]
    assert (q[..., 1:] >= q[..., :-1]).all()


@pytest.mark.parametrize("switch", [dict(norm="none"), dict(norm="revin"), dict(gat=False)])
def test_switches_change_output(switch):
    x, sec, seg, r = _inputs(2)
    ref = _model()
    other = _model(**switch)
    # same weights wherever the modules coincide, so any difference comes from the switched component
    other.load_state_dict(
        {
            k: v
            for k, v in ref.state_dict().items()
            if k in other.state_dict() and other.state_dict()[k].shape == v.shape
        },
        strict=False,
    )
    assert not torch.allclose(ref(x, sec, seg, r)["point"], other(x, sec, seg, r)["point"], atol=1e-5)


def test_quantile_heads_switch():
    x, sec, seg, r = _inputs(3)
    assert "quantiles" not in _model(quantiles=())(x, sec, seg, r)
    # with quantile heads the pinball term enters the loss and changes the gradient of the shared trunk
    y = torch.randn(N, 2)
    grads = []
    for qs in [(0.1, 0.5, 0.9), ()]:
        m = _model(quantiles=qs).train()
        torch.manual_seed(1)
        loss, _ = MultiHorizonLoss((1, 5), quantiles=qs, lambda_q=1.0)(m(x, sec, seg, r), y)
        loss.backward()
        grads.append(m.vsn.weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


def test_fan_removes_main_frequencies():
    fan = FAN(n_features=2, window=32, hidden=4, topk=2)
    t = torch.arange(32).float()
    x = torch.stack([torch.sin(2 * torch.pi * 3 * t / 32) + 1.0, torch.cos(2 * torch.pi * 5 * t / 32)], -1)[None]
    resid, summary = fan(x)
    assert resid.abs().max() < 1e-4  # DC + one tone, two tones: all in the top-2 bins
    assert summary.shape == (1, 4)
    assert fan.main_component(x).sub(x).abs().max() < 1e-4


def test_gat_needs_returns():
    x, sec, seg, _ = _inputs()
    with pytest.raises(ValueError, match="returns"):
        _model()(x, sec, seg)


@pytest.mark.parametrize("name,lo,hi", [("full", 5_611_803 * 0.9, 5_611_803 * 1.1), ("small", 0.2e6, 0.45e6)])
def test_shipped_sizes(name, lo, hi):
    mc = dataclasses.asdict(load_config([f"model={name}"]).model)
    mc.update(n_features=145, horizons=(1, 5, 10, 20))
    m = ATFTGATFAN(ATFTConfig.from_dict(mc))
    assert lo <= m.get_num_params() <= hi
    assert m.estimate_flops_per_sample() > 2 * m.get_num_params()


def test_overfit_planted_day():
    """A planted cross-section (target = f0 at the last step + a GAT-irrelevant offset) is learned: loss falls,
    in-sample RankIC near 1, predictions keep their spread."""
    x, sec, seg, r = _inputs(4)
    y = torch.stack([x[:, -1, 0], x[:, -1, 0] + 0.5 * x[:, -1, 1]], dim=1) * 0.02
    m = _model(dropout=0.0, gat_dropout=0.0).train()
    loss_fn = MultiHorizonLoss((1, 5), quantiles=m.cfg.quantiles)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        loss, _ = loss_fn(m(x, sec, seg, r), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    m.eval()
    p = m(x, sec, seg, r)["point"].detach()
    assert losses[-1] < 0.3 * losses[0]
    assert rank_ic(p[:, 0], y[:, 0]) > 0.9
    assert p[:, 0].std() > 0.3  # no collapse: z-scored targets have std 1


def test_fan_top_mask_matches_topk():
    fan = FAN(n_features=3, window=40, hidden=4, topk=3)
    power = torch.rand(50, 3, 21, generator=torch.Generator().manual_seed(5))
    ref = torch.zeros_like(power, dtype=torch.bool).scatter_(-1, power.topk(3, dim=-1).indices, True)
    assert torch.equal(fan._top_mask(power), ref)


def test_variable_selection_is_one_softmax_per_window():
    x, sec, seg, _r = _inputs(6)
    m = _model()
    c_s = m.static(sec, seg)[0]
    sel, w = m.vsn(x, c_s)
    assert w.shape == (N, 1, F) and torch.allclose(w.sum(-1), torch.ones(N, 1), atol=1e-5)
    # the selected input is Σ_f w_f (x_f W_f + b_f) before the post-selection GRN, at every step
    direct = torch.einsum("nlf,nf,fh->nlh", x, w[:, 0], m.vsn.weight) + (w[:, 0] @ m.vsn.bias)[:, None]
    assert torch.allclose(m.vsn.post(direct), sel, atol=1e-5)


def test_variable_selection_starts_near_uniform():
    x, sec, seg, _r = _inputs(7)
    spread = {}
    for gain in (1.0, 0.1):
        m = _model(vsn_init_gain=gain)
        _, w = m.vsn(x, m.static(sec, seg)[0])
        spread[gain] = float((w.max(-1).values / w.min(-1).values).mean().detach())
    assert spread[0.1] < 1.5 < spread[1.0]  # gain 1: some features start several times more selected than others


def test_cpu_dropout_scales_and_masks():
    from gogooku3.model.tft import Dropout

    d = Dropout(0.25).train()
    torch.manual_seed(0)
    y = d(torch.ones(20000))
    assert abs((y == 0).float().mean().item() - 0.25) < 0.02
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.75))
    assert torch.equal(d.eval()(torch.ones(5)), torch.ones(5))


def test_benchmark_runs_without_polars_or_hydra():
    """benchmarks/bench_model.py must run where only torch (+ torch_geometric, numpy) is installed."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys, runpy; [sys.modules.__setitem__(m, None) for m in ('polars', 'hydra', 'omegaconf')]; "
        "sys.argv = ['bench', '--stocks', '12', '--window', '24', '--features', '6', '--steps', '1', "
        "'--warmup', '1', '--threads', '1', '--no-gat']; "
        f"runpy.run_path({str(root / 'benchmarks' / 'bench_model.py')!r}, run_name='__main__')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["samples_per_sec"] > 0 and res["features"] == 6 and res["gat"] is False


def test_ensemble_averages_its_members_and_shares_the_graph():
    from gogooku3.model.ensemble import ATFTEnsemble

    x, sec, seg, r = _inputs()
    a, b = _model(), _model()
    with torch.no_grad():
        for p in b.parameters():  # stands in for a member trained from another seed
            p.add_(0.1 * torch.randn_like(p))
    ens = ATFTEnsemble([a, b]).eval()
    with torch.no_grad():
        oa, ob, oe = a(x, sec, seg, r), b(x, sec, seg, r), ens(x, sec, seg, r)
    assert not torch.allclose(oa["point"], ob["point"])  # different seeds, different members
    assert torch.allclose(oe["point"], (oa["point"] + ob["point"]) / 2, atol=1e-6)
    assert torch.allclose(oe["quantiles"], (oa["quantiles"] + ob["quantiles"]) / 2, atol=1e-6)
    assert (oe["quantiles"].diff(dim=-1) >= 0).all()
    assert ens.get_num_params() == 2 * a.get_num_params()
    assert ens.estimate_flops_per_sample() == 2 * a.estimate_flops_per_sample()
