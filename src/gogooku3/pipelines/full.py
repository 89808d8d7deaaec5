"""FullTrainingPipeline: every stage in one process, each reading the previous stage's output from disk.

raw data (synthetic | jquants | files) -> dataset build -> SafeTrainingPipeline -> ATFT-GAT-FAN training
-> backtest (model and baseline) -> report (JSON + HTML) -> next-day predictions.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from gogooku3.core.errors import ConfigError
from gogooku3.core.io import peak_rss_mb

if TYPE_CHECKING:
    from gogooku3.config.schema import FilesDataSettings, Settings

log = logging.getLogger(__name__)

STEPS = ("data", "build", "safe", "train", "backtest", "report", "predict")


class FullTrainingPipeline:
    """Run the steps listed in `cfg.run.steps` in order (default: all of them)."""

    def __init__(self, cfg: Settings):
        self.cfg = cfg
        steps = cfg.run.steps
        unknown = [s for s in steps if s not in STEPS]
        if unknown:
            raise ConfigError(f"run.steps: unknown step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}")
        self.steps = [s for s in STEPS if s in steps]
        self.results: dict[str, Any] = {}

    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        for step in self.steps:
            t = time.perf_counter()
            log.info("── step %s ──", step)
            self.results[step] = getattr(self, f"_{step}")()
            log.info("step %s done in %.1f s (peak RSS %.0f MiB)", step, time.perf_counter() - t, peak_rss_mb())
        log.info("full pipeline done in %.1f s", time.perf_counter() - t0)
        return self.results

    # ---- steps --------------------------------------------------------------------------------------
    def _data(self) -> Any:
        source = self.cfg.data.source
        if source == "synthetic":
            from gogooku3.sources.synthetic import synthesize

            return synthesize(self.cfg)
        if source == "jquants":
            from gogooku3.sources.jquants import fetch

            return fetch(self.cfg)
        if source == "files":
            from gogooku3.sources.files import import_files

            path = cast("FilesDataSettings", self.cfg.data).path  # source == "files"
            if not path:
                raise ConfigError("data=files needs data.path=<your CSV or parquet> for `gogooku3 run`")
            return import_files(self.cfg, Path(path))
        raise ConfigError(f"data.source: unknown source '{source}' (synthetic, jquants, files)")

    def _build(self) -> Any:
        from gogooku3.features.builder import build_dataset

        return build_dataset(self.cfg)

    def _safe(self) -> Any:
        from gogooku3.pipelines.safe import SafeTrainingPipeline

        return SafeTrainingPipeline(self.cfg).run()

    def _train(self) -> Any:
        from gogooku3.pipelines.atft import CompleteATFTTrainingPipeline

        return CompleteATFTTrainingPipeline(self.cfg).run()

    def _run_dir(self) -> Path:
        return Path(self.cfg.paths.runs_dir) / "last"

    def _backtest(self) -> Any:
        from gogooku3.evaluation.backtest.run import run_backtest
        from gogooku3.evaluation.results import run_predictions

        # every predictor of the run, the product first (the report backtests them again on its aligned rows)
        return {name: run_backtest(self.cfg, file) for name, file in run_predictions(self._run_dir()).items()}

    def _report(self) -> Any:
        from gogooku3.evaluation.report import build_report

        return build_report(self.cfg, self._run_dir())

    def _predict(self) -> Any:
        from gogooku3.pipelines.predict import predict

        return predict(self.cfg, self._run_dir(), None)
