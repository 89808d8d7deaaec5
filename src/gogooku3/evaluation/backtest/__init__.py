"""Cost-aware long/short backtest of a predictions file (Date, Code, pred_{h}d, target_{h}d).

Timing. ``target_{h}d`` at Date t is AdjC(t+lag+h)/AdjC(t+lag) − 1 with lag = ``labels.entry_lag``: the signal is
known after the close of t, and the cohort formed on t is entered at the close of e = t+lag and closed at the close
of x = t+lag+h (sessions of the dataset's calendar). Over [e, x] it earns Σ w·r with r the name's realised return
(below); day by day, its names' daily returns.

Universe (point in time). On signal date t a name is eligible when it has a prediction on t and (optionally) passes
the price/liquidity filter on t's values; nothing after t is read, so the universe on t is the same whether or not
later rows exist.

Realised return r of a held name. ``target_{h}d(t)`` when the label exists; otherwise, from the dataset's prices
(`Market`, an adjusted price index): a name with no row on the entry session is *unfilled* (r = 0, weight 0); a name
that has no row on x but trades later was *suspended* and realises its return at the next available close; a name
that never trades again was *delisted* and realises the return to its last available close (a delisting return).
Without prices a missing label realises 0 and is counted *unpriced*. Each case is counted in ``positions``.

Cohorts (Jegadeesh–Titman overlapping portfolios). Every session t of the dataset's calendar from the first
prediction date through the last forms a cohort from t's predictions (the book below) with 1/h of the capital, held
buy-and-hold for h sessions: its weights drift with its names' prices and nothing is traded inside it. h cohorts are
live on each session, so no figure depends on a start day. (A fixed schedule that rebalances the whole capital every
h-th session from a start s, `backtest(schedule_offset=s)`, kept for comparison, is h times one h-th of this book:
the book is the mean of the h of them.) h = 1 is the daily book. A session without eligible predictions forms no
cohort (its 1/h stays cash; ``n_missing_dates``), nor does one whose exit session lies beyond the data
(``n_unrealised_dates``) or one with fewer than ``min_names`` eligible names (``n_skipped_dates``).

Daily rows. Row t (Date = signal date t) is the session from the entry close of t to the next close, and carries
the P&L of every cohort live over it. Rows run from the first cohort through the last cohort's last session, so the
first and the last h − 1 rows hold fewer than h cohorts (``exposure`` = Σ_i |the book's drifted value in name i|).
Prices: the dataset's adjusted price index, carried over sessions without a row (a suspension; after a delisting it
stays put); without the dataset, the 1-day labels ``target_1d`` of the predictions (h > 1 without either is a
DataError). A cohort's last row also books the gap between its label r and its price path, so that its P&L over its
h rows is exactly (1/h)·Σ w·r (a name suspended at the exit realises at its next close, as above). The capital is
constant (a cohort's P&L is not reinvested in it); the equity compounds the daily net returns.

Book. Long the top ``long_fraction`` and short the bottom ``short_fraction`` of the eligible names by prediction
(higher prediction → long; no sign-inversion switch). Leg sizes are floor(fraction · N); ties are broken by Code.
Weights are equal within a leg or proportional to |pred − day's median pred| (``weighting: score``); each leg sums to
1 in gross (long +1, short −1: dollar-neutral, gross exposure 2, returns per unit of capital). ``method:
mean_variance`` instead solves a dollar-neutral mean-variance problem with the cross-sectionally z-scored predictions
as expected returns and a diagonal risk model from a trailing-volatility column (see `book._mean_variance_weights`).

Trading realism (the *realistic* backtest; the *ideal* one applies none of it; both are always computed and reported
side by side, ``realism`` picks the headline: realistic by default for every source; auto = realistic for J-Quants
data, ideal for synthetic/files):

- ``borrow_only``: a name is shorted only when it is loan-eligible (貸借銘柄, margin_interest IssType "2") as known
  on t; the short leg is filled from the next names in rank order (``mean_variance``: such shorts are dropped).
- ``price_limits``: no new long entry at a limit-up entry close, no new short entry at a limit-down one (a name held
  on the same side by the previous session's cohort is not a new entry); the order is skipped (the weight stays
  cash) and counted. Limits come from the J-Quants flags ``UL``/``LL`` when the dataset has them, else from the TSE
  daily price-limit table (`price_limit`) applied to the previous close in the entry day's share basis.
- ``lot_size`` with ``capital``: shares = floor(|w| · capital / (Close_e · lot)) · lot at the entry close
  (Close in the day's own share basis), w = ±shares · Close_e / capital; a name whose one lot exceeds its weight is
  skipped and counted.

Per row: long = Σ_{long positions} value·daily return, short = −Σ_{short positions} value·daily return (so gross =
long − short; for h = 1 gross = Σ w·r, long = Σ_{long} w·r, short = Σ_{short} |w|·r); turnover = Σ_i |entering_i −
exiting_i|, the trades at the row's entry close netted per name: the new cohort's (1/h)·w against what the cohort
formed h sessions earlier holds at its exit, (1/h)·w·(1 + r) — its weights drifted (the first row counts the build,
2/h; the last cohorts' exits are not charged). ``avg_turnover_undrifted`` is the same without the drift (the former
Σ|w_t − w_{t−1}| for h = 1), for comparison.
Costs, both always computed: the ideal book pays **flat** = cost_bps · 1e-4 · turnover; the
realistic one pays ``cost_model`` (default **spread_impact**, the TSE model of `costs`): per trade |Δw| · (commission +
the name's half-spread that day (Corwin-Schultz from High/Low, floored at half a TSE tick) + impact_coef · σ ·
√(|Δw| · capital / ADV)), fills capped at participation_cap · ADV and none at a limit-locked close or on a halted name
(the rest carried to the next session, its P&L charged as opportunity cost), and a borrow fee on the short gross.
net = gross − cost.

Summary over the n rows of daily net returns r (one series whatever h), with P = ``periods_per_year`` sessions a
year (auto: the data calendar's mean sessions over its whole calendar years, else its rate over a span of a year or
more, else 245, the TSE's; ``annualisation`` says which): ann_return = mean(r)·P; ann_vol = std(r)·√P; **sharpe =
mean(r)/std(r)·√P** (the project's only Sharpe); sortino = mean(r)/√mean(min(r,0)²)·√P; cagr = Π(1+r)^(P/n) − 1;
max_drawdown = min over t of equity_t / max_{s≤t} equity_s − 1 on the compounded net equity starting at 1 (a negative
fraction); calmar = cagr / |max_drawdown|; win_rate = share of sessions with net > 0 (the backtest's hit rate);
avg_turnover = mean turnover a session; sharpe_tstat = the Newey–West t-stat of mean(r) (`metrics.mean_tstat`,
bandwidth rule's h = 1: consecutive rows do not overlap; ``tstat_method``, ``hac_lag``). Benchmarks: long-only
equal-weight top quantile vs equal-weight universe of the eligible names, each a cohort book like the strategy.

Modules (no module imports a later one): `config` (BacktestConfig), `market` (Market: calendar, prices, realism
inputs, price-limit table), `predictions` (read and check), `book` (universe, legs, weights), `execution` (realism
at the entry close), `realise` (realised returns and statuses; the cohorts' prices, daily P&L and trades), `costs`
(turnover, both cost models), `summary` (BacktestResult, the summary figures, rolling Sharpe, annualisation),
`benchmarks` (TOPIX, benchmark-relative figures), `engine` (backtest, backtest_both), `run` (`gogooku3 backtest`:
files in, report out).
"""
