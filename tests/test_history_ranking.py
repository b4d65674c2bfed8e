"""benchmarks/history_ranking.py: what a finished run's small-loss split ranks, its recorded losses or the label."""

import pytest

from casam.cli import main as casam_main


@pytest.fixture(scope="module")
def history_ranking(benchmark_script):
    return benchmark_script("history_ranking")


def digits_run(out, loss, history_loss):
    assert casam_main([
        "train", "--dataset", "digits", "--train-subset", "1000", "--model", "mlp", "--epochs", "5", "--warmup", "2", "--lr", "0.1",
        "--noise", "symmetric:0.5", "--loss", loss, "--criterion", "small-loss", "--history-loss", history_loss,
        "--out", str(out), "--progress", "false", "--tensorboard", "false",
    ]) == 0
    return out


def test_reads_both_rankings_of_a_run_and_they_agree_with_cross_entropy(history_ranking, tmp_path, capsys):
    """On a cross-entropy history the recorded l_i (EMA of -log p_i[y_i]) and -log h_i[y_i] (of the EMA) rank
    nearly alike; on an ELR run that recorded its training loss they part, the recorded one less precise. Both
    splits keep r of each given class, so they select as many samples; the counts are the selected by true class."""
    ce = digits_run(tmp_path / "ce", "ce", "cross-entropy")
    elr = digits_run(tmp_path / "elr", "elr", "training")
    capsys.readouterr()
    lines = history_ranking.main([str(ce), str(elr)])
    printed = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and printed[0].startswith("| run | P recorded") and len(printed) == 4
    for line in lines:
        for name in ("recorded", "cross-entropy"):
            split = line[name]
            assert 0 < split["precision"] <= 100 and 0 < split["recall"] <= 100
            assert len(split["true_by_given"]) == 10 and all(len(counts) == 10 for counts in split["true_by_given"])
        assert sum(map(sum, line["recorded"]["true_by_given"])) == sum(map(sum, line["cross-entropy"]["true_by_given"]))
    same, parted = lines
    assert abs(same["recorded"]["precision"] - same["cross-entropy"]["precision"]) < 2
    assert same["recorded"]["true_by_given"] != parted["recorded"]["true_by_given"]
    assert parted["recorded"]["true_by_given"] != parted["cross-entropy"]["true_by_given"]
    # ELR's label-free term lets wrong labels in that the label's cross-entropy keeps out (on digits at 50 %: 97.3 against 98.0)
    assert parted["recorded"]["precision"] < parted["cross-entropy"]["precision"]
