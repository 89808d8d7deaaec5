"""Cost-aware long/short backtest of a predictions file (Date, Code, pred_{h}d, target_{h}d).

Timing. ``target_{h}d`` at Date t is AdjC(t+lag+h)/AdjC(t+lag) − 1 with lag = ``labels.entry_lag``: the signal is
known after the close of t and the position is entered at the close of e = t+lag and closed at the close of
x = t+lag+h (sessions of the dataset's calendar). A rebalance on signal date t earns Σ w·r with r the name's
realised return over [e, x] (below).

Universe (point in time). On signal date t a name is eligible when it has a prediction on t and (optionally) passes
the price/liquidity filter on t's values; nothing after t is read, so the universe on t is the same whether or not
later rows exist.

Realised return r of a held name. ``target_{h}d(t)`` when the label exists; otherwise, from the dataset's prices
(`Market`, an adjusted price index): a name with no row on the entry session is *unfilled* (r = 0, weight 0); a name
that has no row on x but trades later was *suspended* and realises its return at the next available close; a name
that never trades again was *delisted* and realises the return to its last available close (a delisting return).
Without prices a missing label realises 0 and is counted *unpriced*. Each case is counted in ``positions``.

Schedule. Rebalances fall every h-th session of the dataset's calendar from the first prediction date (h = 1: every
session), so a missing date does not shift the schedule; a scheduled date without predictions is skipped and counted
(``n_missing_dates``), as is one whose exit session lies beyond the data (``n_unrealised_dates``) and one with fewer
than ``min_names`` eligible names (``n_skipped_dates``).

Book. Long the top ``long_fraction`` and short the bottom ``short_fraction`` of the eligible names by prediction
(higher prediction → long; no sign-inversion switch). Leg sizes are floor(fraction · N); ties are broken by Code.
Weights are equal within a leg or proportional to |pred − day's median pred| (``weighting: score``); each leg sums to
1 in gross (long +1, short −1: dollar-neutral, gross exposure 2, returns per unit of capital). ``method:
mean_variance`` instead solves a dollar-neutral mean-variance problem with the cross-sectionally z-scored predictions
as expected returns and a diagonal risk model from a trailing-volatility column (see `book._mean_variance_weights`).

Trading realism (the *realistic* backtest; the *ideal* one applies none of it; both are always computed and reported
side by side, ``realism`` picks the headline: auto = realistic for J-Quants data, ideal for synthetic/files):

- ``borrow_only``: a name is shorted only when it is loan-eligible (貸借銘柄, margin_interest IssType "2") as known
  on t; the short leg is filled from the next names in rank order (``mean_variance``: such shorts are dropped).
- ``price_limits``: no new long entry at a limit-up entry close, no new short entry at a limit-down one (a name held
  on the same side at the previous rebalance is not a new entry); the order is skipped (the weight stays cash) and
  counted. Limits come from the J-Quants flags ``UL``/``LL`` when the dataset has them, else from the TSE daily
  price-limit table (`price_limit`) applied to the previous close in the entry day's share basis.
- ``lot_size`` with ``capital``: shares = floor(|w| · capital / (Close_e · lot)) · lot at the entry close
  (Close in the day's own share basis), w = ±shares · Close_e / capital; a name whose one lot exceeds its weight is
  skipped and counted.

Per period: gross = Σ w·r, long = Σ_{long} w·r, short = Σ_{short} |w|·r (gross = long − short), turnover = Σ|w_t −
w_{t−1}| over the union of names with w_{t−1} the previous rebalance's weights (the first rebalance counts the full
build, 2.0). Costs, both always computed (``cost_model`` picks the one in ``net``): **flat** = cost_bps · 1e-4 ·
turnover; **spread_impact** = Σ_i |Δw_i| · ((commission_bps + half_spread_bps) · 1e-4 + impact_coef · σ_i ·
√(|Δw_i| · capital / ADV_i)) with σ_i the daily volatility (``vol_column`` / √252) and ADV_i the yen average daily
volume (volume_ma_20 · Close, else dollar_volume) on t, a missing value taking the day's median (without any ADV
only commission + half-spread is charged, reported as such). net = gross − cost.

Summary over the n periods of net returns r, with P = periods_per_year / h periods a year:
ann_return = mean(r)·P; ann_vol = std(r)·√P; **sharpe = mean(r)/std(r)·√P** (the project's only Sharpe; √252 on
daily net returns for h = 1); sortino = mean(r)/√mean(min(r,0)²)·√P; cagr = Π(1+r)^(P/n) − 1; max_drawdown = min over
t of equity_t / max_{s≤t} equity_s − 1 on the compounded net equity starting at 1 (a negative fraction); calmar =
cagr / |max_drawdown|; win_rate = share of periods with net > 0 (the backtest's hit rate); avg_turnover = mean
turnover; sharpe_tstat = the Newey–West t-stat of mean(r) (`metrics.mean_tstat`, non-overlapping periods so the
bandwidth rule's h = 1; ``tstat_method``, ``hac_lag``). Benchmarks: long-only equal-weight top quantile vs
equal-weight universe of the eligible names (realised returns as above).

Modules (no module imports a later one): `config` (BacktestConfig), `market` (Market: calendar, prices, realism
inputs, price-limit table), `predictions` (read and check), `book` (universe, legs, weights), `execution` (realism
at the entry close), `realise` (realised returns and statuses), `costs` (turnover, both cost models), `summary`
(BacktestResult, the summary figures, rolling Sharpe), `benchmarks` (TOPIX, benchmark-relative figures), `engine`
(backtest, backtest_both), `run` (`gogooku3 backtest`: files in, report out).
"""
