import pytest

from casam.cli import main


def test_plot_compares_runs(tmp_path, capsys):
    base = ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "2", "--train-subset", "none", "--progress", "false"]
    assert main(base + ["--optimizer", "sgd", "--out", str(tmp_path / "sgd")]) == 0
    assert main(base + ["--optimizer", "casam", "--warmup", "1", "--out", str(tmp_path / "casam")]) == 0
    png = tmp_path / "cmp.png"
    assert main(["plot", str(tmp_path / "sgd"), str(tmp_path / "casam"), "--out", str(png)]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert f"wrote {png}" in capsys.readouterr().out
    # one CA-SAM run's split: per-class selection and (logged) gradient cosine; an SGD run has no split
    assert main(base + ["--optimizer", "casam", "--warmup", "1", "--log-cosine", "true", "--out", str(tmp_path / "cos")]) == 0
    split = tmp_path / "split.png"
    assert main(["plot", str(tmp_path / "cos"), "--split", "--out", str(split)]) == 0
    assert split.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and split.stat().st_size > 20_000
    assert main(["plot", str(tmp_path / "sgd"), "--split", "--out", str(tmp_path / "no.png")]) == 2
    assert "has no selection metrics" in capsys.readouterr().err and not (tmp_path / "no.png").exists()
    assert main(["plot", str(tmp_path / "sgd"), str(tmp_path / "cos"), "--split"]) == 2


def test_plot_refuses_a_folder_without_a_run(tmp_path, capsys):
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "holds no metrics.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
