"""Predictors behind one interface (fit on a plan, predict days): ATFT-GAT-FAN, LightGBM, blend, oracle."""

DEEP = "atft"  # the product's network in `predictors.zoo`: model facts, importance, the fallback product; the zoo's
# other networks (`predictors.nets`) train beside it, each under RUN/checkpoints/<name>/ and RUN/logs/<name>/; the bench
# pairs every model with it
