"""benchmarks/split_start.py: where a CA-SAM run's split starts, and round 27's reading of the 80 % runs."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def split_start(benchmark_script):
    return benchmark_script("split_start")


def lines_by_seed(split_start, method_dir):
    """split_start.py's lines for one committed method folder under docs/, keyed by seed folder name."""
    return {Path(line["run"]).name: line for line in split_start.run_lines([str(ROOT / "docs" / method_dir)])}


def test_the_split_starts_at_the_first_epoch_that_sets_samples_aside(split_start):
    warm = {"sel_precision": 0.2, "selected_fraction": 1.0}
    rows = [warm, warm, {"sel_precision": 0.6, "selected_fraction": 0.15}, {"sel_precision": 0.7, "selected_fraction": 0.16}]
    assert split_start.split_start(rows) == (3, 0.6)
    assert split_start.split_start([warm, warm]) is None
    assert split_start.split_start([{"test_acc": 0.5}]) is None  # a method without a split


def test_reproduces_round_27s_reading_of_the_earlier_80_percent_runs(split_start, capsys):
    """docs/casam-split.md, round 27: in the earlier rounds' 80 % runs with the perturbation from the likely-clean
    side only, a split that starts below 62 % precise never ends above 48 % nor peaks above 56 %, and one that
    starts at 65 % or more always peaks at 50 % or more."""
    lines = split_start.main([str(ROOT / "docs" / "*" / "runs" / "symmetric-0.8" / "casam+*"),
                              "--exclude", "@mu0.5", "@mu0.25", "@warmup-sam", "heavy-warmup", "history-from", "heavy-criterion", "heavy-small-loss",
                              "heavy-groups", "heavy-one-perturbation", "heavy-history-ce"])
    low = [line for line in lines if line["precision"] < 62]
    high = [line for line in lines if line["precision"] >= 65]
    # 59 folders, 36 of them at 65 % or more, when round 27 ran; later 80 % runs may add to them
    assert len(lines) >= 59 and len(low) == 19 and len(high) >= 36
    assert {line["split_epoch"] for line in lines} == {3}  # every one after the two-epoch warm-up
    assert max(line["last"] for line in low) == pytest.approx(48.01) and max(line["best"] for line in low) == pytest.approx(55.76)
    assert min(line["best"] for line in high) == pytest.approx(50.41)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 + len(lines) and printed[2].startswith("| 51.7 (3) | 45.5 (2) | 28.3 | 20 |")


def test_round_28s_split_starts_less_precise_without_the_first_epoch(split_start):
    """docs/casam-split.md, finding 32: with history_from 1 the split starts less precise on every seed."""
    defaults = lines_by_seed(split_start, "casam-heavy-warmup/runs/symmetric-0.8/casam+ce")
    later = lines_by_seed(split_start, "casam-history-from/runs/symmetric-0.8/casam+ce@history-from1")
    assert sorted(later) == sorted(defaults) == [f"seed{s}" for s in range(100, 105)]
    gaps = [defaults[seed]["precision"] - later[seed]["precision"] for seed in defaults]
    assert min(gaps) == pytest.approx(0.3, abs=0.06) and max(gaps) == pytest.approx(7.2, abs=0.06)


def test_round_29s_split_starts_less_precise_and_ends_higher(split_start):
    """docs/casam-split.md, finding 33: small-loss's split starts less precise than agreement's on every seed,
    and every run ends higher."""
    agreement = lines_by_seed(split_start, "casam-heavy-warmup/runs/symmetric-0.8/casam+ce")
    small_loss = lines_by_seed(split_start, "casam-heavy-criterion/runs/symmetric-0.8/casam+ce@heavy-small-loss")
    assert sorted(small_loss) == sorted(agreement) == [f"seed{s}" for s in range(100, 105)]
    gaps = [agreement[seed]["precision"] - small_loss[seed]["precision"] for seed in agreement]
    assert min(gaps) == pytest.approx(1.9, abs=0.06) and max(gaps) == pytest.approx(8.8, abs=0.06)
    assert all(small_loss[seed]["last"] > agreement[seed]["last"] for seed in agreement)
