"""benchmarks/split_criteria.py: the criteria's reading of the history on which CA-SAM's split starts."""

import dataclasses

import pytest

GRID = """
base: {dataset: digits, train_subset: 1000, model: mlp, epochs: 4, lr: 0.1, batch_size: 128}
noises: [symmetric:0.8]
seeds: [0]
methods:
  casam+ce: {}
  sgd+ce: {}
"""


@pytest.fixture(scope="module")
def split_criteria(benchmark_script):
    return benchmark_script("split_criteria")


@pytest.fixture(scope="module")
def lines(split_criteria, tmp_path_factory):
    grid = tmp_path_factory.mktemp("grid") / "grid.yaml"
    grid.write_text(GRID)
    return split_criteria.main([str(grid), "symmetric:0.8/casam+ce/*"])


def test_reads_the_history_after_the_warmup_under_each_criterion(lines):
    """One line per criterion, on the same history: agreement's split at 80 % noise leaves whole classes out,
    small-loss keeps the same share of each given class (r is agreement's rate, so about as many samples)."""
    by = {line["criterion"]: line for line in lines}
    assert list(by) == ["agreement", "class-thresholds", "small-loss"] and all(line["run"] == "symmetric:0.8/casam+ce/seed0" for line in lines)
    assert all(0 <= line[k] <= 100 for line in lines for k in ("precision", "recall", "selected"))
    assert all(len(line["class_recall"]) == 10 for line in lines)
    assert by["small-loss"]["selected"] == pytest.approx(by["agreement"]["selected"], abs=1.0)
    def left_out(line):
        return sum(r < 10 for r in line["class_recall"])
    assert left_out(by["small-loss"]) < left_out(by["agreement"])
    assert min(by["small-loss"]["class_recall"]) > min(by["agreement"]["class_recall"])


def test_the_history_is_the_warmups(split_criteria, tmp_path):
    """The run stops when its warm-up ends: every sample seen once per warm-up epoch; only CA-SAM has one."""
    from casam.bench import expand_grid, load_grid

    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    casam, sgd = (run.config for run in expand_grid(load_grid(grid), out=tmp_path, only=["*/casam+ce/*", "*/sgd+ce/*"]))
    history, is_noisy, labels = split_criteria.history_after_warmup(dataclasses.replace(casam, warmup=1))
    assert history["counts"].min() == history["counts"].max() == 1
    assert len(is_noisy) == len(labels) == 1000 and 0.7 < is_noisy.float().mean() < 0.9
    with pytest.raises(ValueError, match="only a CA-SAM run with a warm-up"):
        split_criteria.history_after_warmup(sgd)
