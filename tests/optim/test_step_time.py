"""benchmarks/step_time.py stays runnable and keeps its output contract (a tiny run, not a timing)."""

import json

import pytest


@pytest.fixture(scope="module")
def step_time(benchmark_script):
    return benchmark_script("step_time")


def test_last_line_is_the_json_summary(step_time, capsys):
    step_time.main(["--models", "cnn", "--rounds", "2", "--steps", "1", "--warmup", "0", "--batch-cnn", "8"])
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert set(summary) >= {"casam_over_sam", "sam_over_sgd", "models"}
    cnn = summary["models"]["cnn"]
    assert summary["casam_over_sam"] == cnn["casam_over_sam"] > 0 and summary["sam_over_sgd"] == cnn["sam_over_sgd"] > 0
    assert cnn["sgd_s"] > 0 and cnn["batch"] == 8
    assert "CA-SAM/SAM" in lines[-2]


def test_groups_adds_the_grouped_step_and_its_ratio(step_time, capsys):
    step_time.main(["--models", "cnn", "--rounds", "2", "--steps", "1", "--warmup", "1", "--batch-cnn", "16", "--groups", "4"])
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    cnn = summary["models"]["cnn"]
    assert summary["groups_over_casam"] == cnn["groups_over_casam"] > 0 and cnn["casam_groups_s"] > 0 and cnn["groups"] == 4
    assert "x4 groups / CA-SAM" in lines[-2]


def test_refuses_bad_flags(step_time):
    with pytest.raises(SystemExit):
        step_time.main(["--rounds", "0"])
    with pytest.raises(SystemExit):
        step_time.main(["--groups", "0"])
