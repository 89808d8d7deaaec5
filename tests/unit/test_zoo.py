"""The zoo's networks (model.zoo): forward shapes, hand-counted parameters, what each reads of the window, missing
inputs, and the model-config dict every caller builds them from (`arch`; none: ATFT-GAT-FAN)."""

import pytest
import torch

from gogooku3.core.errors import ConfigError
from gogooku3.model.atft_gat_fan import ATFTGATFAN
from gogooku3.model.zoo import MLPNet, NetConfig, NetEnsemble, RNNNet, build_model, ensemble_of, n_members

N, L, F = 7, 5, 4


def _cfg(arch: str, **kw) -> dict:
    base = dict(
        arch=arch,
        n_features=F,
        window=L,
        horizons=[1, 5],
        hidden=8,
        layers=2,
        dropout=0.1,
        head_hidden=3,
        quantiles=[0.1, 0.5, 0.9],
    )
    return {**base, **kw}


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(N, L, F, generator=torch.Generator().manual_seed(seed))


def _run(model, x):
    z = torch.zeros(x.shape[0], dtype=torch.long)
    return model.eval()(x, z, z)


@pytest.mark.parametrize("arch", ["mlp", "gru", "lstm"])
def test_forward_shapes_and_feature_weights(arch):
    torch.manual_seed(0)
    out = _run(build_model(_cfg(arch)), _x())
    assert out["point"].shape == (N, 2)
    assert out["quantiles"].shape == (N, 2, 3)
    assert (out["quantiles"].diff(dim=-1) >= 0).all()  # monotone, as ATFT's heads
    w = out["feature_weights"]
    assert w.shape == (F,) and (w >= 0).all() and torch.isclose(w.sum(), torch.tensor(1.0))
    no_q = _run(build_model(_cfg(arch, quantiles=[])), _x())
    assert "quantiles" not in no_q and no_q["point"].shape == (N, 2)


# heads: 2 horizons × (Linear(8, 3) 27 + point Linear(3, 1) 4 + quantiles Linear(3, 3) 12) = 86
@pytest.mark.parametrize(
    "arch, params",
    [
        ("mlp", (4 * 8 + 8) + (8 * 8 + 8) + 86),
        ("gru", (24 * 4 + 24 * 8 + 2 * 24) + (24 * 8 + 24 * 8 + 2 * 24) + 86),
        ("lstm", (32 * 4 + 32 * 8 + 2 * 32) + (32 * 8 + 32 * 8 + 2 * 32) + 86),
    ],
)
def test_param_counts(arch, params):
    model = build_model(_cfg(arch))
    assert model.get_num_params() == params
    # FLOPs: 3 × 2 × params, the recurrent weights once per window step
    rnn = params - 86 if arch != "mlp" else 0
    assert model.estimate_flops_per_sample() == 6.0 * (rnn * L + params - rnn)


def test_mlp_reads_the_last_day_only_and_rnns_the_whole_window():
    torch.manual_seed(0)
    x = _x()
    earlier = x.clone()
    earlier[:, :-1] += 5.0
    mlp, gru, lstm = (build_model(_cfg(a)) for a in ("mlp", "gru", "lstm"))
    assert torch.equal(_run(mlp, x)["point"], _run(mlp, earlier)["point"])
    for rnn in (gru, lstm):
        assert not torch.allclose(_run(rnn, x)["point"], _run(rnn, earlier)["point"])


@pytest.mark.parametrize("arch", ["mlp", "gru", "lstm"])
def test_rows_are_independent_and_missing_inputs_are_zero(arch):
    """No cross-sectional mixing (a stock's prediction is its own inputs'), and a missing (NaN) input is read as the
    day's centre 0, never propagated."""
    torch.manual_seed(0)
    model = build_model(_cfg(arch))
    x = _x()
    other = x.clone()
    other[0] = 3.0
    a, b = _run(model, x)["point"], _run(model, other)["point"]
    assert torch.allclose(a[1:], b[1:], atol=1e-6) and not torch.allclose(a[0], b[0])
    holes = x.clone()
    holes[2, :, 1] = float("nan")
    zeros = x.clone()
    zeros[2, :, 1] = 0.0
    p = _run(model, holes)["point"]
    assert torch.isfinite(p).all() and torch.allclose(p, _run(model, zeros)["point"])


def test_build_model_arch_and_ensembles():
    assert isinstance(build_model(_cfg("mlp")), MLPNet) and isinstance(build_model(_cfg("gru")), RNNNet)
    ens = build_model(_cfg("lstm"), members=3)
    assert isinstance(ens, NetEnsemble) and n_members(ens) == 3
    assert ens.get_num_params() == 3 * build_model(_cfg("lstm")).get_num_params()
    torch.manual_seed(1)
    a, b = build_model(_cfg("gru")), build_model(_cfg("gru"))
    both = ensemble_of([a, b])
    x = _x()
    want = (_run(a, x)["point"] + _run(b, x)["point"]) / 2
    assert torch.allclose(_run(both, x)["point"], want, atol=1e-6)
    assert ensemble_of([a]) is a and n_members(a) == 1


def test_model_config_keys_are_checked():
    with pytest.raises(ConfigError, match=r"model\.arch='tcn'"):
        build_model(_cfg("tcn"))
    cfg = _cfg("gru")
    cfg.pop("hidden")
    with pytest.raises(ConfigError, match=r"model\.hidden: required key missing"):
        build_model(cfg)
    with pytest.raises(ConfigError, match=r"model\.hiden: unknown key"):
        build_model(_cfg("gru", hiden=3))
    with pytest.raises(ConfigError, match=r"model\.dropout=1\.5"):
        build_model(_cfg("gru", dropout=1.5))
    assert NetConfig.from_dict(NetConfig.from_dict(_cfg("lstm")).to_dict()) == NetConfig.from_dict(_cfg("lstm"))


def test_a_config_without_arch_is_atft_gat_fan():
    """Bundles and checkpoints saved before the zoo carry no `arch`: they still build ATFT-GAT-FAN."""
    from gogooku3.model.atft_gat_fan import ATFTConfig

    mc = ATFTConfig.packaged(n_features=F, horizons=(1, 5), window=L, hidden=8, head_hidden=4, gat=False).to_dict()
    assert isinstance(build_model(mc), ATFTGATFAN)
    assert isinstance(build_model({**mc, "arch": "atft_gat_fan"}), ATFTGATFAN)
    assert n_members(build_model(mc, members=2)) == 2


def test_every_zoo_entry_of_the_yaml_builds_and_its_keys_are_checked(cfg):
    """The packaged `predictors.zoo` network entries construct (their keys are the class's); a wrong key, arch or
    input mode is a ConfigError naming `predictors.zoo.<name>.<key>`."""
    from pathlib import Path

    from gogooku3.config.compose import to_dict
    from gogooku3.predictors.base import Context
    from gogooku3.predictors.nets import NetPredictor

    ctx = Context(cfg, Path("unused.parquet"), None, "", [], [])  # type: ignore[arg-type]
    nets = {}
    for name, entry in cfg.predictors.zoo.items():
        spec = to_dict(entry)
        if spec.pop("_target_").endswith("NetPredictor"):
            nets[name] = NetPredictor(ctx, name, **spec)
    assert {"mlp", "gru", "lstm", "gru_raw", "lstm_raw", "atft_raw"} <= set(nets)
    assert nets["mlp"].keys["window"] == 1 and nets["gru"].keys["window"] == cfg.model.window
    assert {n: p.input_mode for n, p in nets.items() if n.endswith("_raw")} == dict.fromkeys(
        ("gru_raw", "lstm_raw", "atft_raw"), "raw"
    )
    gru = {k: v for k, v in to_dict(cfg.predictors.zoo["gru"]).items() if k != "_target_"}
    with pytest.raises(ConfigError, match=r"predictors\.zoo\.g\.hiden: unknown key for arch gru"):
        NetPredictor(ctx, "g", **{**gru, "hiden": 3})
    with pytest.raises(ConfigError, match=r"predictors\.zoo\.g\.layers: required key missing"):
        NetPredictor(ctx, "g", **{k: v for k, v in gru.items() if k != "layers"})
    with pytest.raises(ConfigError, match=r"predictors\.zoo\.g\.arch='tcn'"):
        NetPredictor(ctx, "g", **{**gru, "arch": "tcn"})
    with pytest.raises(ConfigError, match=r"predictors\.zoo\.g\.inputs='alpha'"):
        NetPredictor(ctx, "g", **{**gru, "inputs": "alpha"})
    with pytest.raises(ConfigError, match=r"predictors\.zoo\.a\.hidden: unknown key for arch atft_gat_fan"):
        NetPredictor(ctx, "a", arch="atft_gat_fan", inputs="raw", hidden=8)
