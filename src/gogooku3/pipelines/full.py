"""FullTrainingPipeline: every stage in one process, each reading the previous stage's output from disk.

raw data (synthetic | jquants | files) -> dataset build -> SafeTrainingPipeline -> ATFT-GAT-FAN training
-> backtest (model and baseline) -> report (JSON + HTML) -> next-day predictions.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from gogooku3.core.errors import ConfigError, DataError
from gogooku3.core.io import peak_rss_mb, read_json
from gogooku3.core.provenance import recorded_run

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
        # one record for every step: the train step's run folder gets run.log (all steps) and provenance.json
        with recorded_run(self.cfg):
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
        return backtest_run(self.cfg, self._run_dir())

    def _report(self) -> Any:
        from gogooku3.evaluation.report import build_report

        return build_report(self.cfg, self._run_dir())

    def _predict(self) -> Any:
        from gogooku3.pipelines.predict import predict

        return predict(self.cfg, self._run_dir(), None)


def backtest_run(cfg: Settings, run_dir: Path) -> dict[str, Any]:
    """Every predictor of a training run backtested on the rows all of them predicted (`metrics.align_rows` on the
    comparison's horizons, the rows the report scores), the product first; one report per predictor."""
    from gogooku3.evaluation.backtest.config import BacktestConfig
    from gogooku3.evaluation.backtest.predictions import read_predictions
    from gogooku3.evaluation.backtest.run import backtest_frame
    from gogooku3.evaluation.metrics import align_rows
    from gogooku3.evaluation.results import run_predictions

    files = run_predictions(run_dir)
    horizons = [BacktestConfig.from_any(cfg).horizon]
    if (run_dir / "comparison.json").exists():  # the report's predictors and horizons
        comp = read_json(run_dir / "comparison.json")
        horizons = comp["horizons"]
        files = {name: file for name, file in files.items() if name in comp["pooled"]} or files
    aligned, rows = align_rows({name: read_predictions(file) for name, file in files.items()}, horizons)
    log.info("backtest: %d aligned (Date, Code) rows for %s", rows["n_common"], ", ".join(aligned))
    reports, skipped = {}, {}
    for name, frame in aligned.items():
        try:
            reports[name] = backtest_frame(cfg, frame, str(files[name]), name)
        except DataError as e:  # e.g. the noise market's oracle, constant every day: no book; as the report does
            log.warning("backtest: %s skipped: %s", name, e)
            skipped[name] = str(e)
    if not reports:
        raise DataError(f"backtest: no predictor of {run_dir} makes a book ({skipped})")
    return reports
