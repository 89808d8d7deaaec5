"""Predictors behind one interface (fit on a plan, predict days): ATFT-GAT-FAN, LightGBM, blend, oracle."""
