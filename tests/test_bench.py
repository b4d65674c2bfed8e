"""`casam bench` end to end on real data: a tiny grid on the digits data set run by two worker
processes, its report, skipping, resuming, failures, refusals; and --quick on benchmarks/grid.yaml."""

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from casam.bench import CSV_COLUMNS, GridError, check_run_folders, default_workers, expand_grid, load_grid, parse_method
from casam.cli import main

REPO = Path(__file__).resolve().parents[1]
GRID = REPO / "benchmarks" / "grid.yaml"
REQUIRED = "dataset,noise,method,seed,epochs,last_acc,best_acc,sel_precision,sel_recall,memorization,sec_per_epoch".split(",")
TIMING = ("epoch_time_s", "samples_per_s", "data_fraction")
TINY = {
    "base": {"dataset": "digits", "train_subset": None, "model": "mlp", "epochs": 2, "batch_size": 64, "lr": 0.05},
    "noises": ["symmetric:0.2", "symmetric:0.5"],
    "seeds": [0, 1],
    "methods": {"sgd+ce": {}, "casam+ce": {"rho": 0.05, "warmup": 1}},
}
RUN_IDS = [f"{n}/{m}/seed{s}" for n in TINY["noises"] for m in TINY["methods"] for s in TINY["seeds"]]


def write_grid(path, grid):
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return str(path)


def bench(*args):
    return main(["bench", "--no-progress", *map(str, args)])


def read_csv(out):
    with open(Path(out) / "results.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def run_dir(out, run_id):
    noise, method, seed = run_id.split("/")
    return Path(out) / "runs" / noise.replace(":", "-") / method / seed


def metric_rows(path):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in path.read_text().splitlines()]


def summary_mtimes(out):
    return {p: p.stat().st_mtime_ns for p in Path(out).glob("runs/*/*/seed*/summary.json")}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny grid, run once: (grid file, output folder, printed output)."""
    root = tmp_path_factory.mktemp("bench")
    grid = write_grid(root / "grid.yaml", TINY)
    out = root / "out"
    assert bench("--grid", grid, "--out", out, "--workers", 2) == 0
    return grid, out


@pytest.fixture
def tiny_copy(tiny, tmp_path):
    """A private copy of the finished tiny grid (run configs keep their old `out`, which bench ignores)."""
    grid, out = tiny
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    return grid, copy


# ---------------------------------------------------------------------------------------------- report
def test_results_csv_has_one_row_per_run_with_fractions_and_blanks(tiny):
    _, out = tiny
    columns, rows = read_csv(out)
    assert columns[: len(REQUIRED)] == REQUIRED and tuple(columns) == CSV_COLUMNS
    assert sorted(f"{r['noise']}/{r['method']}/seed{r['seed']}" for r in rows) == sorted(RUN_IDS)
    for row in rows:
        assert row["dataset"] == "digits" and row["epochs"] == "2"
        for key in ("last_acc", "best_acc", "memorization"):
            assert 0 <= float(row[key]) <= 1
        assert float(row["best_acc"]) >= float(row["last_acc"])
        assert float(row["last_acc"]) > 0.3  # ten classes: chance is 0.1
        assert float(row["sec_per_epoch"]) > 0
        if row["method"] == "sgd+ce":  # selects nothing: not applicable, so empty
            assert row["sel_precision"] == "" and row["sel_recall"] == ""
        else:
            assert 0 <= float(row["sel_precision"]) <= 1 and 0 <= float(row["sel_recall"]) <= 1


def test_table_has_mean_and_std_over_seeds_and_a_headline(tiny):
    _, out = tiny
    text = (out / "table.md").read_text()
    cell = r"\d+\.\d ± \d+\.\d"  # two seeds: a real standard deviation
    headline = text.split("## Headline")[1].split("\n## ")[0]
    assert "| method | symmetric:0.2 | symmetric:0.5 |" in headline
    for method in TINY["methods"]:
        assert re.search(rf"^\| {re.escape(method)} \| {cell} \| {cell} \|$", headline, re.M), method
    full = text.split("## Every noise setting")[1]
    for noise in TINY["noises"]:
        sgd = re.search(rf"^\| {noise} \| sgd\+ce \| 2 \| {cell} \| {cell} \| – \| – \| – \| {cell} \| [\d.]+ \| 1\.00 \|$", full, re.M)
        casam = re.search(rf"^\| {noise} \| casam\+ce \| 2 \| {cell} \| {cell} \| {cell} \| {cell} \| {cell} \| {cell} \| [\d.]+ \| [\d.]+ \|$", full, re.M)
        assert sgd and casam, noise
    assert "Data set digits" in text and "2 epochs" in text and "seeds 0, 1" in text
    assert "| sgd+ce | – |" in text and "| casam+ce | rho 0.05, warmup 1, criterion agreement, history_beta 0.9," in text


def test_plots_are_png_images(tiny):
    import matplotlib.image

    _, out = tiny
    for name in ("accuracy_vs_noise.png", "curves_symmetric-0.5.png"):
        path = out / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 100 and image.shape[1] > 300


def test_per_epoch_curves_stay_in_every_run_folder(tiny):
    _, out = tiny
    for run_id in RUN_IDS:
        rows = metric_rows(run_dir(out, run_id) / "metrics.jsonl")
        assert [r["epoch"] for r in rows] == [1, 2]
        assert all("test_acc" in r and "memorization" in r for r in rows)
        assert ("sel_precision" in rows[-1]) == ("casam" in run_id)
        # --workers 2: cores // 2 threads per run, whatever is left to do (the float summation order)
        assert all(r["torch_threads"] == max(1, default_workers() // 2) for r in rows)
    ignored = (out / ".gitignore").read_text()
    assert "!runs/" in ignored and all(f"runs/**/{name}" in ignored for name in ("checkpoint*.pt", "best_model.pt", "suspects.csv"))


def test_report_only_remakes_the_same_report_without_training(tiny_copy, capsys):
    grid, out = tiny_copy
    before = (out / "results.csv").read_text(), (out / "table.md").read_text()
    mtimes = summary_mtimes(out)
    for name in ("results.csv", "table.md", "accuracy_vs_noise.png", "curves_symmetric-0.5.png"):
        (out / name).unlink()
    assert bench("--grid", grid, "--out", out, "--report-only") == 0
    after = (out / "results.csv").read_text(), (out / "table.md").read_text()
    assert after[0].replace(str(out), "") == before[0].replace(str(out), "") and after[1] == before[1]
    assert (out / "accuracy_vs_noise.png").is_file() and (out / "curves_symmetric-0.5.png").is_file()
    assert summary_mtimes(out) == mtimes
    assert bench("--grid", grid, "--out", out, "--report-only", "--quick") == 2
    assert "--report-only runs nothing" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- resuming
def test_second_invocation_skips_finished_runs(tiny_copy, capsys):
    grid, out = tiny_copy
    mtimes = summary_mtimes(out)
    assert len(mtimes) == 8
    assert bench("--grid", grid, "--out", out, "--workers", 2) == 0
    printed = capsys.readouterr().out
    assert "8 of 8 runs already finished, skipped" in printed and "0 done, 0 resumed, 8 skipped" in printed
    assert summary_mtimes(out) == mtimes


def test_half_done_run_is_resumed_and_a_failed_run_does_not_stop_the_others(tiny_copy, capsys):
    grid, out = tiny_copy
    # killed after epoch 1: the epoch-1 checkpoint is the newest, one metrics line, no summary
    half = run_dir(out, "symmetric:0.5/casam+ce/seed1")
    whole = metric_rows(half / "metrics.jsonl")
    shutil.copy(half / "checkpoint.prev.pt", half / "checkpoint.pt")
    (half / "metrics.jsonl").write_text((half / "metrics.jsonl").read_text().splitlines(keepends=True)[0])
    (half / "summary.json").unlink()
    # a run that cannot go on: both checkpoints are garbage
    broken = run_dir(out, "symmetric:0.2/sgd+ce/seed0")
    for name in ("checkpoint.pt", "checkpoint.prev.pt", "summary.json"):
        (broken / name).unlink()
        if name != "summary.json":
            (broken / name).write_bytes(b"not a checkpoint")
    mtimes = summary_mtimes(out)

    assert bench("--grid", grid, "--out", out, "--workers", 2) == 1
    captured = capsys.readouterr()
    assert "symmetric:0.5/casam+ce/seed1 resumed" in captured.out
    assert "1 done" not in captured.out and "0 done, 1 resumed, 6 skipped (finished before), 1 failed" in captured.out
    assert "failed: symmetric:0.2/sgd+ce/seed0" in captured.err
    assert metric_rows(half / "metrics.jsonl") == whole  # the same epochs as the uninterrupted run
    assert (broken / "bench-error.log").read_text().strip()
    assert all(summary_mtimes(out)[p] == t for p, t in mtimes.items())  # the others untouched
    _, rows = read_csv(out)  # the report covers the seven finished runs
    assert len(rows) == 7 and "1 unfinished run(s) are not included: symmetric-0.2/sgd+ce/seed0." in (out / "table.md").read_text()


def test_run_folder_configured_differently_is_refused(tiny_copy, tmp_path, capsys):
    _, out = tiny_copy
    grid = write_grid(tmp_path / "longer.yaml", {**TINY, "base": {**TINY["base"], "epochs": 3}})
    mtimes = summary_mtimes(out)
    assert bench("--grid", grid, "--out", out) == 2
    err = capsys.readouterr().err
    assert "holds a run configured differently (epochs 2, not 3)" in err and err.count("\n") == 1
    assert summary_mtimes(out) == mtimes
    # an option the method does not use (a CA-SAM option in an SGD run's config.yaml) does not count
    sgd_config = run_dir(out, "symmetric:0.2/sgd+ce/seed0") / "config.yaml"
    text = sgd_config.read_text()
    assert "warmup_rho: 0.0" in text
    sgd_config.write_text(text.replace("warmup_rho: 0.0", "warmup_rho: 0.3"))
    assert bench("--grid", write_grid(tmp_path / "same.yaml", TINY), "--out", out) == 0
    assert summary_mtimes(out) == mtimes


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "change, message",
    [
        ({"methods": {"sgd+ce": {"colour": "red"}}}, "unknown option 'colour'"),
        ({"methods": {"sgd+ce": {"rho": 0.1}}}, "rho only applies with optimizer sam or asam or casam"),
        ({"methods": {"adam+ce": {}}}, "method 'adam+ce' is not OPTIMIZER+LOSS"),
        ({"noises": ["symmetric:0.2", "gaussian:0.3"]}, "noise kind must be one of"),
        ({"noises": ["symmetric:1.5"]}, "symmetric:1.5"),
        ({"noises": ["asymmetric:0.4"]}, "noise asymmetric:0.4 cannot be applied to digits"),
        ({"base": {**TINY["base"], "noise": "none"}}, "base sets 'noise'"),
        ({"seeds": [0, 0]}, "seeds lists 0 more than once"),
        ({"budget": 3}, "unknown key 'budget'"),
    ],
)
def test_bad_grid_is_refused_before_anything_runs(tmp_path, capsys, change, message):
    grid = write_grid(tmp_path / "grid.yaml", {**TINY, **change})
    out = tmp_path / "out"
    assert bench("--grid", grid, "--out", out) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("casam bench: ") and err.count("\n") == 1
    assert not out.exists()


def test_missing_grid_and_bad_options_are_refused(tmp_path, capsys):
    assert bench("--grid", tmp_path / "nope.yaml", "--out", tmp_path / "out") == 2
    assert "grid file" in capsys.readouterr().err
    grid = write_grid(tmp_path / "grid.yaml", TINY)
    assert bench("--grid", grid, "--out", tmp_path / "out", "--only", "pairflip*") == 2
    assert "--only 'pairflip*' matches none of the 8 runs" in capsys.readouterr().err
    assert bench("--grid", grid, "--out", tmp_path / "out", "--curves", "symmetric:0.8") == 2
    assert "--curves 'symmetric:0.8' is not a noise setting of the grid" in capsys.readouterr().err
    assert bench("--out", tmp_path / "empty", "--report-only") == 2
    assert "holds no runs/ folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_second_bench_into_the_same_folder_is_refused(tmp_path, capsys):
    from casam.bench import lock_out

    grid = write_grid(tmp_path / "grid.yaml", TINY)
    held = lock_out(tmp_path / "out")
    try:
        assert bench("--grid", grid, "--out", tmp_path / "out") == 2
    finally:
        held.close()
    assert "another casam bench is running into" in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()


def _children(pid):
    """PIDs of the live processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def test_sigterm_stops_the_workers_and_keeps_their_checkpoints(tmp_path):
    """`kill BENCH` (SIGTERM, as a job scheduler sends) must not leave its workers training on as orphans."""
    import os
    import signal
    import subprocess
    import sys
    import time

    grid = write_grid(tmp_path / "grid.yaml", {**TINY, "base": {**TINY["base"], "epochs": 200}, "noises": ["symmetric:0.2"]})
    out = tmp_path / "out"
    bench_process = subprocess.Popen(
        [sys.executable, "-m", "casam", "bench", "--grid", grid, "--out", str(out), "--workers", "2", "--no-progress"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    metrics = [run_dir(out, f"symmetric:0.2/{m}/seed0") / "metrics.jsonl" for m in TINY["methods"]]
    deadline = time.time() + 120
    # an epoch's metrics line is written just before its checkpoint: wait for both, or a loaded machine
    # can deliver the signal in between
    while not all(p.is_file() and p.read_text().count("\n") >= 1 and (p.parent / "checkpoint.pt").is_file() for p in metrics):
        assert time.time() < deadline and bench_process.poll() is None, "the runs did not start"
        time.sleep(0.2)
    workers = [pid for pid in _children(bench_process.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(workers) == 2
    bench_process.send_signal(signal.SIGTERM)
    assert bench_process.wait(timeout=60) == 128 + signal.SIGTERM
    deadline = time.time() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in workers):
        assert time.time() < deadline, "workers still alive after the bench was killed"
        time.sleep(0.1)
    assert all((p.parent / "checkpoint.pt").is_file() for p in metrics)  # a second bench resumes them


def test_method_names_and_only_patterns(tmp_path):
    assert parse_method("sgd+ce+coteaching") == {"optimizer": "sgd", "loss": "ce", "selection": "coteaching"}
    assert parse_method("sam+ce@rho0.1") == {"optimizer": "sam", "loss": "ce", "selection": "none"}
    for bad in ("SGD+CE", "sgd+ce+none", "sgd", "sgd+ce@bad tag"):
        with pytest.raises(GridError):
            parse_method(bad)
    grid = load_grid(write_grid(tmp_path / "grid.yaml", TINY))
    runs = expand_grid(grid, out=tmp_path, only=["*/casam+ce/*", "symmetric:0.2/sgd+ce/seed1"])
    assert [r.id for r in runs] == [  # order: noise, then method (grid order), then seed
        "symmetric:0.2/sgd+ce/seed1", "symmetric:0.2/casam+ce/seed0", "symmetric:0.2/casam+ce/seed1",
        "symmetric:0.5/casam+ce/seed0", "symmetric:0.5/casam+ce/seed1",
    ]
    assert runs[1].config.optimizer == "casam" and runs[1].config.warmup == 1 and runs[0].config.rho == 0.05
    assert runs[1].run_dir == tmp_path / "runs" / "symmetric-0.2" / "casam+ce" / "seed0"


# ---------------------------------------------------------------------------------------------- the real grid
def test_benchmarks_grid_is_the_issue_grid(tmp_path):
    grid = load_grid(GRID)
    runs = expand_grid(grid, out=tmp_path)
    assert len(runs) == 6 * 19 * 3
    assert set(grid.noises) == {"symmetric:0.2", "symmetric:0.5", "symmetric:0.8", "asymmetric:0.4", "pairflip:0.45", "instance:0.4"}
    assert [m for m in grid.methods if "@" not in m] == [
        "sgd+ce", "sam+ce", "asam+ce", "casam+ce", "sgd+gce", "sgd+sce", "sgd+elr", "sgd+ce+coteaching", "casam+elr", "casam+sce",
    ]
    # and the paper's CA-SAM (the defaults before round 9) and round 9's beside CA-SAM's and CA-SAM+ELR's defaults
    # and round 29's heavy criterion (round 31's with lambda 0.5 for ELR, round 32's with the history's cross-entropy),
    # casam train's defaults since, beside the rows made before them
    assert [m for m in grid.methods if "@" in m] == [
        "casam+ce@heavy-small-loss", "casam+ce@mu0", "casam+ce@lambda1", "casam+elr@heavy-small-loss-lambda0.5", "casam+elr@heavy-history-ce", "casam+elr@rho0.02",
        "casam+elr@mu0", "casam+elr@lambda0.5", "sgd+sce@alpha0.1",
    ]
    for run in runs:  # the same budget for every method
        c = run.config
        assert (c.dataset, c.train_subset, c.model, c.epochs, c.batch_size, c.lr, c.schedule, c.weight_decay, c.momentum) == (
            "fashion-mnist", 10000, "cnn", 20, 128, 0.02, "cosine", 0.0, 0.9,
        )
        if c.optimizer != "sgd":  # each SAM-family method at its published radius (ASAM's is relative to |w|); round 33's row
            assert c.rho == (0.5 if c.optimizer == "asam" else 0.02 if run.method == "casam+elr@rho0.02" else 0.05)
            assert c.heavy_rho == (0.05 if run.method == "casam+elr@rho0.02" else None)
        if c.optimizer == "casam":  # the defaults' switch and lambda (0.5, 1 with ELR or SCE); mu 0 and lambda 1 for the paper's CA-SAM
            default = (0.5, 0.6667, 1.0 if c.loss in ("elr", "sce") else 0.5)
            expected = {"mu0": (0.0, None, 1.0), "lambda1": (0.5, 0.6667, 1.0), "lambda0.5": (0.5, 0.6667, 0.5)}.get(run.method.partition("@")[2], default)
            assert (c.perturb_weight, c.perturb_cutoff, c.noisy_weight) == expected
            heavy_elr = run.method in ("casam+elr@heavy-small-loss-lambda0.5", "casam+elr@heavy-history-ce", "casam+elr@rho0.02")
            assert c.heavy_criterion == ("small-loss" if "@heavy-small-loss" in run.method or heavy_elr else None)
            assert c.heavy_noisy_weight == (0.5 if heavy_elr else None)
            assert c.history_loss == ("cross-entropy" if run.method in ("casam+elr@heavy-history-ce", "casam+elr@rho0.02") else "training")
        if c.loss == "sce":  # SCE's alpha as the baselines' tuning round 3 chose it; @alpha0.1 the published value
            assert c.sce_alpha == (None if run.method == "sgd+sce@alpha0.1" else 0.01)
    quick = expand_grid(grid, out=tmp_path, quick=True)
    assert len(quick) == 6 * 19 and {r.seed for r in quick} == {0}
    assert {(r.config.model, r.config.train_subset) for r in quick} == {("mlp", 500)}


def test_quick_mode_on_benchmarks_grid_makes_a_well_formed_table(tmp_path):
    """What CI runs (one noise setting of it, to stay fast; the whole --quick grid takes about 1.5 min)."""
    out = tmp_path / "quick"
    assert bench("--grid", GRID, "--out", out, "--quick", "--only", "symmetric:0.5/*") == 0
    methods = list(load_grid(GRID).methods)
    _, rows = read_csv(out)
    assert [r["method"] for r in rows] == methods
    assert all(r["noise"] == "symmetric:0.5" and r["seed"] == "0" and 0 <= float(r["last_acc"]) <= 1 for r in rows)
    selects = {r["method"] for r in rows if r["sel_precision"]}
    assert selects == {m for m in methods if m.startswith("casam")} | {"sgd+ce+coteaching"}
    text = (out / "table.md").read_text()
    headline = text.split("## Headline")[1].split("\n## ")[0]
    body = [line for line in headline.splitlines() if line.startswith("| ") and not line.startswith(("| method", "| ---"))]
    assert [line.split(" | ")[0][2:] for line in body] == methods
    assert all(re.fullmatch(r"\| \S+ \| \d+\.\d ± – \|", line) for line in body)
    assert (out / "curves_symmetric-0.5.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "grid, out",
    [("grid.yaml", "benchmarks"), ("casam-ablation.yaml", "benchmarks"), ("casam-study.yaml", "casam-study"), ("casam-tuning.yaml", "casam-tuning"),
     ("baselines-tuning.yaml", "baselines-tuning"), ("casam-40epochs.yaml", "casam-40epochs"), ("casam-30epochs.yaml", "casam-30epochs"),
     ("casam-40epochs-losses.yaml", "casam-40epochs-losses"), ("table-30epochs.yaml", "table-30epochs"),
     ("casam-heavy-warmup.yaml", "casam-heavy-warmup"), ("casam-history-from.yaml", "casam-history-from"),
     ("casam-heavy-criterion.yaml", "casam-heavy-criterion"), ("casam-heavy-groups.yaml", "casam-heavy-groups"),
     ("casam-heavy-criterion-losses.yaml", "casam-heavy-criterion-losses"), ("casam-history-loss.yaml", "casam-history-loss")],
)
def test_shipped_grids_match_the_runs_they_published(grid, out):
    """Each shipped grid, resolved against today's defaults, must configure its committed run folders as
    they were run: a changed default would otherwise make `casam bench` refuse (or mix) the published
    table. The grids pin the old values where a default moved (CA-SAM's mu and cutoff in round 9, lambda in
    round 10, one perturbation per batch in 40-epoch runs in round 21)."""
    runs = expand_grid(load_grid(REPO / "benchmarks" / grid), out=REPO / "docs" / out)
    published = [r for r in runs if (r.run_dir / "config.yaml").is_file()]
    assert len(published) >= 5  # the folders are there to compare with (the smallest grids published 5)
    check_run_folders(published)


def test_report_states_the_loss_settings_each_run_trained_with(tmp_path):
    """A loss option given in the grid is what the methods table shows, not the published default."""
    runs = REPO / "docs" / "baselines-tuning" / "runs" / "symmetric-0.5"
    for method in ("sgd+sce", "sgd+sce@alpha0.01", "sgd+gce@q0.9"):
        shutil.copytree(runs / method, tmp_path / "runs" / "symmetric-0.5" / method)
    main(["bench", "--grid", str(REPO / "benchmarks" / "baselines-tuning.yaml"), "--out", str(tmp_path), "--report-only", "--no-progress"])
    table = (tmp_path / "table.md").read_text()
    assert "| sgd+sce | SCE alpha 0.1, beta 1 (published CIFAR-10 values) |" in table
    assert "| sgd+sce@alpha0.01 | SCE alpha 0.01, beta 1 (alpha given; otherwise the published CIFAR-10 values) |" in table
    assert "| sgd+gce@q0.9 | GCE q 0.9 (q given) |" in table
