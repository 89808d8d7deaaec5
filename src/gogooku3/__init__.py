"""gogooku3: point-in-time datasets, ATFT-GAT-FAN and honest backtests for daily Japanese equity returns."""

__version__ = "0.1.0"
