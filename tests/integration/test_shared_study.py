"""One Optuna study shared by several `gogooku3 tune` workers through an RDB URL (docs/distributed.md): two worker
processes, started together against one empty SQLite URL (both are launched before either is waited for, so both
create the schema and the study at once), each with its own
`hpo.seed`, output and cache folders (as two machines would be); the study ends with both workers' trials. (Whether
their trials overlap in time depends on the machine's load: a tiny trial takes about a second; not asserted.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import optuna
import pytest

from conftest import TINY_NET, TINY_SPLIT  # tests/ is on sys.path (rootdir conftest)

# the tiny study of tests/integration/test_tune.py (conftest.write_planted_dataset, one epoch of 4 day batches)
OVERRIDES = [
    *TINY_NET,
    *TINY_SPLIT,
    "baseline.enabled=false",
    "hpo.max_epochs=1",
    "hpo.limit_train_batches=4",
    "hpo.n_startup_trials=1",
    "hpo.space.hidden.choices=[8,16]",
]


@pytest.mark.slow  # two processes each start Lightning and run one tiny trial (~1 min on the shared 2-core box)
def test_two_tune_workers_share_one_study(tmp_path, planted_dataset):
    planted_dataset(tmp_path, n_days=140, n_noise=2)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    # no study and no schema yet: both workers create them at the same moment (`tune._storage` retries the loser)
    env = {**os.environ, "COLUMNS": "250"}  # one log record per line
    procs = []
    for w in range(2):
        cmd = [
            sys.executable,
            "-m",
            "gogooku3.cli",
            "tune",
            *OVERRIDES,
            "hpo.study_name=shared",
            f"hpo.storage={url}",
            f"hpo.seed={w}",
            "hpo.n_trials=1",
            "hpo.max_total_trials=4",
            "hpo.pruner.enabled=false",
            f"paths.output_dir=out_w{w}",
            f"paths.cache_dir=cache_w{w}",
        ]
        procs.append(
            subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    deadline = time.monotonic() + 400
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append(out)
        assert p.returncode == 0, out[-3000:]

    ran = [{int(n) for n in re.findall(r"tune: trial (\d+) ", out)} for out in outs]
    assert all(len(r) == 1 for r in ran) and not ran[0] & ran[1]  # one trial each, different trials
    study = optuna.load_study(study_name="shared", storage=url)
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == sorted(ran[0] | ran[1]) == [0, 1]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert trials[0].params != trials[1].params  # each worker sampled its own (hpo.seed 0 and 1)
    # each worker summarised the study as it saw it at its end; the one finishing last saw both trials
    summaries = [json.loads((tmp_path / f"out_w{w}" / "optuna" / "shared_trials.json").read_text()) for w in range(2)]
    assert max(s["n_trials"] for s in summaries) == 2 and min(s["n_trials"] for s in summaries) >= 1
    assert all(s["storage"] == url for s in summaries)
