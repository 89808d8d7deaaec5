"""MultiHorizonLoss: masking (never zero-filled), per-day z-scoring, positivity, IC term, horizon weights."""

import math

import torch

from gogooku3.model.losses import MultiHorizonLoss, pearson, pinball, zscore


def _out(p):
    return {"point": p}


def test_missing_labels_are_masked_not_zero_filled():
    torch.manual_seed(0)
    p = torch.randn(20, 1)
    y = torch.randn(20, 1)
    y_nan = y.clone()
    y_nan[:5] = float("nan")
    fn = MultiHorizonLoss([1], lambda_ic=0.5)
    masked, _ = fn(_out(p), y_nan)
    subset, _ = fn(_out(p[5:]), y[5:])
    zero_filled, _ = fn(_out(p), torch.nan_to_num(y_nan))
    assert torch.allclose(masked, subset)
    assert not torch.allclose(masked, zero_filled)
    # predictions of masked stocks get no gradient
    p2 = p.clone().requires_grad_(True)
    fn(_out(p2), y_nan)[0].backward()
    assert (p2.grad[:5] == 0).all() and (p2.grad[5:] != 0).any()


def test_loss_positive_and_scale_free_in_targets():
    torch.manual_seed(1)
    p, y = torch.randn(30, 2), torch.randn(30, 2)
    fn = MultiHorizonLoss([1, 5])
    a, _ = fn(_out(p), y)
    b, _ = fn(_out(p), y * 0.01 + 3.0)  # per-day z-score: affine change of the labels does not matter
    assert a > 0 and torch.allclose(a, b, atol=1e-5)


def test_perfect_prediction_minimises_ic_term():
    y = torch.linspace(-1, 1, 25)[:, None]
    z = zscore(y[:, 0], torch.ones(25, dtype=torch.bool))[:, None]
    fn = MultiHorizonLoss([1], huber_delta=1.0, lambda_ic=1.0, lambda_q=0.0, target_transform="zscore")
    perfect, _ = fn(_out(z), y)
    constant, _ = fn(_out(torch.zeros(25, 1)), y)
    assert perfect.item() < 1e-6
    assert constant.item() > 0.5  # a collapsed (constant) prediction is penalised
    assert math.isclose(pearson(z[:, 0], y[:, 0]).item(), 1.0, rel_tol=1e-5)


def test_pinball_and_horizon_weights():
    y = torch.zeros(4)
    q = torch.tensor([[-1.0, 0.0, 1.0]] * 4)
    lv = torch.tensor([0.1, 0.5, 0.9])
    assert math.isclose(pinball(q, y, lv).item(), (0.1 * 1 + 0 + 0.1 * 1) / 3, rel_tol=1e-6)
    torch.manual_seed(2)
    p, y2 = torch.randn(30, 2), torch.randn(30, 2)
    only_first, parts = MultiHorizonLoss([1, 5], weights=[1.0, 0.0])(_out(p), y2)
    assert torch.allclose(only_first, parts["loss_1d"])


def test_day_without_labels_gives_zero_loss_with_graph():
    p = torch.randn(8, 1, requires_grad=True)
    loss, parts = MultiHorizonLoss([1])(_out(p), torch.full((8, 1), float("nan")))
    assert loss.item() == 0.0 and parts == {"loss_1d": 0.0}  # a skipped horizon reports 0
    loss.backward()


def test_horizon_weights_from_map_or_list():
    from gogooku3.training.fit import horizon_weights

    assert horizon_weights({1: 4, 5: 2, 10: 1, 20: 1}, [1, 5]) == [4.0, 2.0]  # subset of horizons
    assert horizon_weights({"1": 3}, [1, 20]) == [3.0, 1.0]  # missing horizons weigh 1
    assert horizon_weights([2, 1], [1, 5]) == [2.0, 1.0]
    assert horizon_weights(None, [1, 5]) is None


def test_rank_gauss_targets_are_robust_and_masked():
    from gogooku3.model.losses import rank_gauss

    y = torch.tensor([0.01, -0.02, 5.0, float("nan"), 0.0])  # one fat-tail outlier, one missing label
    mask = torch.isfinite(y)
    z = rank_gauss(torch.nan_to_num(y), mask)
    assert z[3] == 0.0
    assert torch.argsort(z[mask]).tolist() == torch.argsort(y[mask]).tolist()  # order preserved
    assert abs(float(z[mask].sum())) < 1e-5  # symmetric normal quantiles
    assert float(z[2]) < 1.5  # the 5.0 outlier is just the top rank, not 250 sigma
    loss_fn = MultiHorizonLoss([1], target_transform="rank_gauss", min_stocks=3)
    loss, _ = loss_fn({"point": torch.randn(5, 1)}, y[:, None])
    assert torch.isfinite(loss) and loss > 0


def _reference_loss(fn: MultiHorizonLoss, out, y):
    """The loss as it was computed with boolean indexing and a Python skip per horizon (host syncs): the reference
    the sync-free forward must reproduce."""
    import torch.nn.functional as F

    point, quant = out["point"].float(), out.get("quantiles")
    total, wsum = point.new_zeros(()), 0.0
    for j in range(len(fn.horizons)):
        mask = torch.isfinite(y[:, j])
        if int(mask.sum()) < fn.min_stocks:
            continue
        z = fn.standardise(y[:, j].float(), mask)[mask]
        p = point[mask, j]
        loss = F.huber_loss(p, z, delta=fn.huber_delta) + fn.lambda_ic * (1.0 - pearson(p, z))
        if quant is not None:
            loss = loss + fn.lambda_q * pinball(quant[mask, j].float(), z, fn.levels)
        total, wsum = total + fn.weights[j] * loss, wsum + float(fn.weights[j])
    return point.sum() * 0.0 if wsum == 0 else total / wsum


def test_sync_free_forward_equals_the_indexed_reference():
    """Random days: some horizons below min_stocks, one all-NaN, NaN predictions outside the mask never leak."""
    torch.manual_seed(3)
    levels = (0.1, 0.5, 0.9)
    for transform in ("rank_gauss", "zscore"):
        fn = MultiHorizonLoss([1, 5, 10, 20], weights=[4, 2, 1, 1], quantiles=levels, target_transform=transform)
        for trial in range(12):
            n = 40
            y = torch.randn(n, 4)
            y[torch.rand(n, 4) < 0.3] = float("nan")
            y[:, trial % 4] = float("nan")  # an all-NaN horizon
            y[4:, (trial + 1) % 4] = float("nan")  # 4 labels < min_stocks 5
            if trial == 11:
                y[:] = float("nan")  # a day without any label
            p = torch.randn(n, 4, requires_grad=True)
            q = torch.randn(n, 4, 3, requires_grad=True)
            new, parts = fn({"point": p, "quantiles": q}, y)
            gp, gq = torch.autograd.grad(new, (p, q))
            ref = _reference_loss(fn, {"point": p, "quantiles": q}, y)
            rp, rq = torch.autograd.grad(ref, (p, q), allow_unused=True)
            assert torch.allclose(new, ref, rtol=1e-6, atol=1e-7), (transform, trial, new, ref)
            assert torch.allclose(gp, rp, rtol=1e-5, atol=1e-7)
            assert torch.allclose(gq, torch.zeros_like(gq) if rq is None else rq, rtol=1e-5, atol=1e-7)
            assert parts[f"loss_{[1, 5, 10, 20][trial % 4]}d"] == 0.0  # skipped horizons report 0
            assert torch.isfinite(gp).all() and torch.isfinite(gq).all()
