"""Evaluation: one definition of every metric (`metrics`), the long/short backtest (`backtest`) and the run
report (`report`, drawn by `report_html`). Everything here reads predictions; nothing here trains."""
