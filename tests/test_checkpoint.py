import pytest
import torch

from casam import checkpoint


def test_save_keeps_previous_and_load_takes_newest(tmp_path):
    checkpoint.save(tmp_path, {"epoch": 1, "w": torch.ones(2)})
    checkpoint.save(tmp_path, {"epoch": 2, "w": torch.zeros(2)})
    state, path = checkpoint.load_latest(tmp_path)
    assert state["epoch"] == 2 and path.name == checkpoint.CURRENT
    assert torch.load(tmp_path / checkpoint.PREVIOUS, weights_only=False)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([checkpoint.CURRENT, checkpoint.PREVIOUS])


def test_corrupt_newest_falls_back_and_says_which_file(tmp_path, capsys):
    checkpoint.save(tmp_path, {"epoch": 1})
    checkpoint.save(tmp_path, {"epoch": 2})
    (tmp_path / checkpoint.CURRENT).write_bytes(b"garbage")
    state, path = checkpoint.load_latest(tmp_path)
    assert state["epoch"] == 1 and path.name == checkpoint.PREVIOUS
    assert f"{tmp_path / checkpoint.CURRENT} is unreadable" in capsys.readouterr().err


def test_missing_newest_falls_back(tmp_path, capsys):
    checkpoint.save(tmp_path, {"epoch": 1})
    checkpoint.save(tmp_path, {"epoch": 2})
    (tmp_path / checkpoint.CURRENT).unlink()
    assert checkpoint.load_latest(tmp_path)[0]["epoch"] == 1
    assert "is missing" in capsys.readouterr().err


def test_no_usable_checkpoint(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no usable checkpoint"):
        checkpoint.load_latest(tmp_path)
    (tmp_path / checkpoint.CURRENT).write_bytes(b"x")
    with pytest.raises(checkpoint.CheckpointError, match="unreadable"):
        checkpoint.load_latest(tmp_path)
