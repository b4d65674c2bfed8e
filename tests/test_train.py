"""`casam train` end to end on real data: outputs, kill-and-resume equality, checkpoint fallback, NaN stop."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from casam import checkpoint
from casam.cli import main
from casam.config import resolve
from casam.train import TrainingDiverged, read_metrics, train

TIMING = ("epoch_time_s", "samples_per_s", "data_fraction")


def rows(run_dir):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def test_fashion_mnist_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--train-subset", "400", "--epochs", "2", "--warmup", "1", "--out", str(out), "--progress", "false"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted(
        ["checkpoint.pt", "checkpoint.prev.pt", "config.yaml", "metrics.jsonl", "summary.json", "suspects.csv"]
    )
    history = rows(out)
    assert [r["epoch"] for r in history] == [1, 2]
    for key in ("train_loss", "test_acc", "sel_precision", "sel_recall", "sel_f1", "selected_fraction", "memorization", "lr"):
        assert key in history[-1]
    assert history[-1]["test_acc"] > 0.3  # ten classes: chance is 0.1
    # warm-up epoch selects everything, so its precision is the clean fraction (50 % noise)
    assert history[0]["selected_fraction"] == 1.0 and abs(history[0]["sel_precision"] - 0.5) < 0.01
    summary = json.loads((out / "summary.json").read_text())
    assert summary["last_acc"] == history[-1]["test_acc"] and summary["epochs"] == 2
    assert resolve(yaml_path=str(out / "config.yaml")).train_subset == 400
    printed = capsys.readouterr().out
    assert "casam+ce on fashion-mnist (symmetric:0.5)" in printed and "likely-clean" in printed
    # the samples that look mislabelled: CA-SAM's likely-noisy set, least plausible label first
    lines = (out / "suspects.csv").read_text().splitlines()
    assert lines[0] == "index,given_label,suggested_label,p_given"
    assert len(lines) - 1 == summary["suspects"] > 0
    p_given = [float(line.split(",")[3]) for line in lines[1:]]
    assert p_given == sorted(p_given)
    assert summary["suspects_precision"] > 0.5  # better than picking at random (half the labels are wrong)


def _train_cmd(out, epochs):
    return [
        sys.executable, "-m", "casam", "train", "--dataset", "fashion-mnist", "--train-subset", "3000",
        "--model", "cnn", "--optimizer", "casam", "--warmup", "1", "--epochs", str(epochs),
        "--out", str(out), "--progress", "false", "--tensorboard", "false",
    ]


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_train_cmd(tmp_path / "whole", 3), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed, 3), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "checkpoint.pt").exists():
        time.sleep(0.05)
    time.sleep(0.5)  # into the second epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = checkpoint.load_latest(killed)[0]["epoch"]
    assert done < 3, "the run finished before it was killed; make the epochs longer"

    subprocess.run([sys.executable, "-m", "casam", "train", "--resume", str(killed)], check=True, env=env, capture_output=True)
    assert rows(killed) == rows(tmp_path / "whole")
    for run in ("whole", "killed"):
        assert json.loads((tmp_path / run / "summary.json").read_text())["epochs"] == 3


def test_corrupt_checkpoint_falls_back_to_previous(tmp_path, capsys):
    base = ["train", "--dataset", "digits", "--model", "mlp", "--optimizer", "sam", "--train-subset", "none", "--progress", "false"]
    assert main(base + ["--epochs", "3", "--out", str(tmp_path / "whole")]) == 0
    run = tmp_path / "run"
    assert main(base + ["--epochs", "3", "--out", str(run)]) == 0
    (run / "checkpoint.pt").write_bytes(b"torn")  # the epoch-3 checkpoint is damaged
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert f"{run / 'checkpoint.pt'} is unreadable" in err and "checkpoint.prev.pt (epoch 2)" in err
    assert rows(run) == rows(tmp_path / "whole")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from casam import learners

    config = resolve(overrides={"dataset": "digits", "model": "mlp", "optimizer": "sgd", "train_subset": "none",
                                "epochs": "4", "out": str(tmp_path), "progress": "false"})
    real_step, calls = learners.SingleLearner.step, {"n": 0}
    steps_per_epoch = -(-1437 // 128)

    def step(self, x, y, idx):
        out = real_step(self, x, y, idx)
        calls["n"] += 1
        if calls["n"] > 2 * steps_per_epoch:  # the third epoch goes wrong
            out.losses[0] = float("nan")
        return out

    monkeypatch.setattr(learners.SingleLearner, "step", step)
    with pytest.raises(TrainingDiverged, match="became nan in epoch 3.*last good checkpoint \\(epoch 2\\)"):
        train(config)
    assert checkpoint.load_latest(tmp_path)[0]["epoch"] == 2
    assert [r["epoch"] for r in rows(tmp_path)] == [1, 2]
    assert not (tmp_path / "summary.json").exists()


def test_run_folder_protection_and_bad_input(tmp_path, capsys):
    base = ["train", "--dataset", "digits", "--model", "mlp", "--optimizer", "sgd", "--epochs", "1", "--progress", "false"]
    assert main(base + ["--out", str(tmp_path)]) == 0
    before = (tmp_path / "metrics.jsonl").read_bytes()
    assert main(base + ["--out", str(tmp_path)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "metrics.jsonl").read_bytes() == before  # nothing lost
    assert main(base + ["--out", str(tmp_path), "--overwrite", "--seed", "1"]) == 0
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "holds no casam run" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--lr", "0.5"]) == 2
    assert "only device" in capsys.readouterr().err
    assert main(base + ["--rho", "-1", "--out", str(tmp_path / "x")]) == 2
    assert "rho must be >= 0; got -1.0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        main(base + ["--no-such-flag"])
    assert torch.get_num_threads() >= 1


def test_held_out_noisy_validation_and_the_split_diagnostics(tmp_path):
    """--val-fraction trains on the rest and scores the held-out noisy part against its given labels each
    epoch; --log-cosine logs cos(g_C, g_B) per step; per-class selection scores are written each epoch."""
    out = tmp_path / "run"
    code = main([
        "train", "--dataset", "digits", "--train-subset", "1000", "--model", "mlp", "--epochs", "4", "--warmup", "2",
        "--lr", "0.1", "--noise", "symmetric:0.3", "--val-fraction", "0.2", "--log-cosine", "true",
        "--out", str(out), "--progress", "false", "--tensorboard", "false",
    ])
    assert code == 0
    history = rows(out)
    steps_per_epoch = -(-800 // 128)  # 200 of the 1,000 samples are held out
    for row in history:
        assert 0 <= row["val_acc"] <= 1 and row["val_loss"] > 0
        assert len(row["grad_cosine_steps"]) == steps_per_epoch and len(row["sel_precision_by_class"]) == 10
    assert history[0]["grad_cosine"] == pytest.approx(1.0) and history[1]["grad_cosine"] == pytest.approx(1.0)  # warm-up: C = B
    assert history[-1]["grad_cosine"] < 0.999  # after it the clean subset's gradient points elsewhere
    # the held-out part is scored against noisy labels: about 70 % of them are right, so it sits below test accuracy
    assert history[-1]["val_acc"] < history[-1]["test_acc"]
    assert len((out / "suspects.csv").read_text().splitlines()) <= 801


def test_val_size_holds_out_noisy_images_outside_the_subset():
    """--val-size N trains on all of train_subset and holds out N other images with the same noise process."""
    from casam.config import ConfigError, TrainConfig
    from casam.train import load_data, split_validation

    config = TrainConfig(dataset="digits", train_subset=800, val_size=400, noise="symmetric:0.4", seed=3)
    trained, held = split_validation(config, load_data(config)[0])
    assert (len(trained), len(held)) == (800, 400)
    rows_of = lambda part: {tuple(image.flatten().tolist()) for image in part.images}  # noqa: E731
    assert not rows_of(trained) & rows_of(held)  # disjoint images (digits has no duplicate images across them)
    for part in (trained, held):  # one noise process: both parts near the 40 % rate
        rate = (part.labels != part.true_labels).float().mean().item()
        assert 0.3 < rate < 0.5
    plain = split_validation(TrainConfig(dataset="digits", train_subset=800, noise="symmetric:0.4", seed=3),
                             load_data(TrainConfig(dataset="digits", train_subset=800, noise="symmetric:0.4", seed=3))[0])
    assert plain[1] is None and len(plain[0]) == 800
    with pytest.raises(ConfigError, match="exceeds"):
        load_data(TrainConfig(dataset="digits", train_subset=1000, val_size=500))
    with pytest.raises(ConfigError, match="not both"):
        TrainConfig(dataset="digits", val_fraction=0.1, val_size=100).validate()


def digits_casam_run(out, noise, epochs, *extra):
    """casam train's CA-SAM on 1,000 digits (MLP, a two-epoch warm-up) into `out`; its metric rows."""
    assert main([
        "train", "--dataset", "digits", "--train-subset", "1000", "--model", "mlp", "--epochs", str(epochs), "--warmup", "2",
        "--lr", "0.1", "--noise", noise, "--out", str(out), "--progress", "false", "--tensorboard", "false", *extra,
    ]) == 0
    return rows(out)


def without_switch(metric_rows):
    """The rows without what the noise switch logs (its estimate and the mu in force), to compare two runs' training."""
    return [{k: v for k, v in r.items() if k not in ("noise_estimate", "perturb_weight")} for r in metric_rows]


@pytest.mark.parametrize("noise, heavy", [("symmetric:0.3", False), ("symmetric:0.8", True)])
def test_perturb_cutoff_runs_as_mu_under_moderate_noise_and_as_the_defaults_under_heavy(tmp_path, capsys, noise, heavy):
    """The default switch (mu 0.5, --perturb-cutoff 0.6667) reads the history's noise estimate once, after
    the warm-up, and logs it: below the cutoff the run is the fixed mu 0.5 run, above it the mu 0 run
    (the paper's perturbation) with the small-loss criterion (round 29's heavy criterion), metric for metric.
    The summary says so under heavy noise only."""
    def run(name, *extra):
        return digits_casam_run(tmp_path / name, noise, 4, *extra)

    capsys.readouterr()
    switched = run("defaults")
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  heavy noise ")]
    assert said == ([f"  heavy noise     estimated {100 * switched[2]['noise_estimate']:.1f} % after the warm-up (cutoff 66.7 %): "
                     "mu 0, the small-loss split"] if heavy else [])
    assert all(r["noise_estimate"] is None and r["perturb_weight"] == 0.5 for r in switched[:2])  # warm-up: not read yet
    estimate = switched[2]["noise_estimate"]
    assert (estimate > 0.6667) is heavy and all(r["noise_estimate"] == estimate for r in switched[2:])
    assert all(r["perturb_weight"] == (0.0 if heavy else 0.5) for r in switched[2:])
    same = run("fixed", "--perturb-cutoff", "none", "--perturb-weight", "0" if heavy else "0.5", *(["--criterion", "small-loss"] if heavy else []))
    assert without_switch(switched) == same


@pytest.mark.parametrize("noise, heavy", [("symmetric:0.3", False), ("symmetric:0.8", True)])
def test_heavy_warmup_lengthens_the_warmup_only_under_heavy_noise(tmp_path, noise, heavy):
    """--heavy-warmup 3 after --warmup 2: under heavy noise (the estimate read after epoch 2 above the cutoff)
    epoch 3 is warm-up too (the whole batch selected) and the run is the --warmup 3 run metric for metric;
    under moderate noise it is the run without the option."""
    def run(name, *extra):
        return digits_casam_run(tmp_path / name, noise, 5, *extra)

    extended = run("extended", "--heavy-warmup", "3")
    assert extended[2]["noise_estimate"] is not None and (extended[2]["noise_estimate"] > 0.6667) is heavy
    assert (extended[2]["selected_fraction"] == 1.0) is heavy and extended[3]["selected_fraction"] < 1.0
    same = run("same", "--warmup", "3") if heavy else run("same")
    assert without_switch(extended) == without_switch(same)


@pytest.mark.parametrize("noise, heavy", [("symmetric:0.3", False), ("symmetric:0.8", True)])
def test_heavy_criterion_changes_the_criterion_only_under_heavy_noise(tmp_path, noise, heavy):
    """--heavy-criterion small-loss (casam train's default with cross-entropy since round 29): under heavy noise
    the run is the --criterion small-loss run metric for metric (the warm-up is criterion-free, and the switch
    hands over before the first split) and not the agreement run; under moderate noise it is the run without
    the option."""
    switched = digits_casam_run(tmp_path / "switched", noise, 4, "--heavy-criterion", "small-loss")
    assert (switched[2]["noise_estimate"] > 0.6667) is heavy
    same = digits_casam_run(tmp_path / "same", noise, 4, *(["--criterion", "small-loss"] if heavy else ["--heavy-criterion", "none"]))
    assert switched == same
    if heavy:
        assert switched != digits_casam_run(tmp_path / "agreement", noise, 4, "--heavy-criterion", "none")


@pytest.mark.parametrize("noise, heavy", [("symmetric:0.3", False), ("symmetric:0.8", True)])
def test_heavy_groups_take_over_the_groups_only_under_heavy_noise(tmp_path, capsys, noise, heavy):
    """--perturb-groups 4 --heavy-groups 1: under heavy noise the run is the --perturb-groups 1 run metric for
    metric (the warm-up's grouped steps are whole-batch steps, and the switch is read before the first split)
    and not the 4-group run; under moderate noise it is the 4-group run. The summary names the groups the run took."""
    capsys.readouterr()
    switched = digits_casam_run(tmp_path / "switched", noise, 4, "--perturb-groups", "4", "--heavy-groups", "1")
    assert ("a perturbation per group" not in (out := capsys.readouterr().out)) is heavy
    assert heavy or "a perturbation per group (4 groups per batch)" in out
    assert (switched[2]["noise_estimate"] > 0.6667) is heavy
    one = digits_casam_run(tmp_path / "one", noise, 4, "--perturb-groups", "1")
    four = digits_casam_run(tmp_path / "four", noise, 4, "--perturb-groups", "4", "--heavy-groups", "none")
    assert (switched == one) is heavy and (switched == four) is not heavy
    assert "heavy_groups: 1" in (tmp_path / "switched" / "config.yaml").read_text()


@pytest.mark.parametrize("option, value, plain, named", [("--heavy-noisy-weight", "0.25", "--noisy-weight", "lambda 0.25"),
                                                         ("--heavy-rho", "0.1", "--rho", "rho 0.1")])
@pytest.mark.parametrize("noise, heavy", [("symmetric:0.3", False), ("symmetric:0.8", True)])
def test_heavy_lambda_and_radius_take_over_only_under_heavy_noise(tmp_path, capsys, noise, heavy, option, value, plain, named):
    """--heavy-noisy-weight 0.25 (lambda; casam train takes 0.5 with ELR since round 31) and --heavy-rho 0.1 (the
    radius; cross-entropy's rho is 0.05): under heavy noise the run is the --noisy-weight 0.25 (--rho 0.1) run
    metric for metric (the warm-up takes plain SGD steps, and the switch is read before the first split); under
    moderate noise it is the run without the option. The summary's heavy-noise line names what the run took."""
    capsys.readouterr()
    switched = digits_casam_run(tmp_path / "switched", noise, 4, option, value)
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  heavy noise")]
    assert (switched[2]["noise_estimate"] > 0.6667) is heavy
    assert said == ([f"  heavy noise     estimated {100 * switched[2]['noise_estimate']:.1f} % after the warm-up (cutoff 66.7 %): "
                     f"mu 0, the small-loss split, {named}"] if heavy else [])
    same = digits_casam_run(tmp_path / "same", noise, 4, plain, value)
    without = digits_casam_run(tmp_path / "without", noise, 4, option, "none")
    assert (switched == same) is heavy and (switched == without) is not heavy
    assert f"{option[2:].replace('-', '_')}: {value}" in (tmp_path / "switched" / "config.yaml").read_text()


def test_elr_defaults_under_heavy_noise_are_the_run_round_32_measured(tmp_path):
    """Rounds 31-32: CA-SAM+ELR's defaults at symmetric 80 % train as the measured candidate (the small-loss split,
    ranked by the history's cross-entropy, and lambda 0.5 from the start: lambda weighs nothing in the warm-up),
    metric for metric; not as round 31's runs (the split ranked by ELR's training loss) nor as before round 31."""
    defaults = digits_casam_run(tmp_path / "defaults", "symmetric:0.8", 4, "--loss", "elr")
    assert defaults[2]["noise_estimate"] > 0.6667
    measured = digits_casam_run(tmp_path / "measured", "symmetric:0.8", 4, "--loss", "elr", "--heavy-criterion", "small-loss",
                                "--noisy-weight", "0.5", "--heavy-noisy-weight", "none", "--history-loss", "cross-entropy", "--rho", "0.05")
    round_31 = digits_casam_run(tmp_path / "round31", "symmetric:0.8", 4, "--loss", "elr", "--heavy-criterion", "small-loss",
                                "--noisy-weight", "0.5", "--heavy-noisy-weight", "none", "--history-loss", "training", "--rho", "0.05")
    before = digits_casam_run(tmp_path / "before", "symmetric:0.8", 4, "--loss", "elr", "--heavy-criterion", "none",
                              "--heavy-noisy-weight", "none", "--rho", "0.05")
    assert defaults == measured and defaults != round_31 and defaults != before


@pytest.mark.parametrize("noise, heavy", [("symmetric:0.3", False), ("symmetric:0.8", True)])
def test_elr_radius_is_002_under_moderate_noise_and_005_under_heavy(tmp_path, noise, heavy):
    """Rounds 33-34: casam train's CA-SAM+ELR runs as rho 0.02 where the noise estimate after the warm-up is at
    most the cutoff and as rho 0.05 above it, metric for metric, and not as the other radius."""
    elr = digits_casam_run(tmp_path / "elr", noise, 4, "--loss", "elr")
    assert (elr[2]["noise_estimate"] > 0.6667) is heavy
    regime = digits_casam_run(tmp_path / "regime", noise, 4, "--loss", "elr", "--rho", "0.05" if heavy else "0.02", "--heavy-rho", "none")
    other = digits_casam_run(tmp_path / "other", noise, 4, "--loss", "elr", "--rho", "0.02" if heavy else "0.05", "--heavy-rho", "none")
    assert elr == regime and elr != other


@pytest.mark.parametrize("loss, same", [("ce", True), ("elr", False)])
def test_history_loss_changes_only_runs_whose_training_loss_is_not_cross_entropy(tmp_path, loss, same):
    """--history-loss training (the history before round 32) against the default cross-entropy, with the
    small-loss split from the first split on: with cross-entropy the history records the same numbers, so the
    runs are the same metric for metric (every cross-entropy run made before the fix repeats); with ELR's
    loss the split ranks other numbers and the runs part after the warm-up."""
    def run(name, history_loss):
        return digits_casam_run(tmp_path / name, "symmetric:0.4", 5, "--loss", loss, "--criterion", "small-loss", "--history-loss", history_loss)

    default, old = run("default", "cross-entropy"), run("old", "training")
    assert default[:2] == old[:2]  # the warm-up does not read the split
    assert (default == old) is same


def test_history_from_changes_the_split_and_nothing_before_it(tmp_path):
    """--history-from 1: the warm-up trains as without it (epochs 0-1 metric for metric); the noise
    estimate read after it and the split from epoch 2 on come from the second epoch's outputs alone, so
    they differ; the run folder records the option."""
    default = digits_casam_run(tmp_path / "all", "symmetric:0.4", 4)
    late = digits_casam_run(tmp_path / "late", "symmetric:0.4", 4, "--history-from", "1")
    assert late[:2] == default[:2]
    assert late[2]["noise_estimate"] != default[2]["noise_estimate"]
    assert without_switch(late[2:]) != without_switch(default[2:])
    assert "history_from: 1" in (tmp_path / "late" / "config.yaml").read_text()


def test_perturb_groups_reaches_the_training_loop_after_the_warmup(tmp_path, capsys):
    """--perturb-groups 4: the warm-up epochs are the one-perturbation run's metric for metric (grouped_step
    is plain SAM there), the epochs after it differ, and the run folder and the summary record the option."""
    def run(name, *extra):
        capsys.readouterr()
        out = tmp_path / name
        assert main([
            "train", "--dataset", "digits", "--train-subset", "1000", "--model", "mlp", "--epochs", "3", "--warmup", "2",
            "--warmup-rho", "none", "--lr", "0.1", "--noise", "symmetric:0.4", "--out", str(out), "--progress", "false",
            "--tensorboard", "false", *extra,
        ]) == 0
        return out, rows(out), capsys.readouterr().out.splitlines()[0]

    one_dir, one, one_title = run("one")
    four_dir, four, four_title = run("four", "--perturb-groups", "4")
    assert four[:2] == one[:2] and four[2] != one[2]
    assert one_title == "casam train: casam+ce on digits (symmetric:0.4), 3 epochs, seed 0"  # one perturbation: the classic step, unsaid
    assert four_title == one_title + ", a perturbation per group (4 groups per batch)"
    # --resume on a finished run trains nothing and prints its summary again (how the README's first demo
    # output got its title line): same metrics, same summary
    summary = (four_dir / "summary.json").read_text()
    assert main(["train", "--resume", str(four_dir)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:2] == [f"casam: resuming {four_dir} after epoch 3 (checkpoint.pt)", four_title]
    assert rows(four_dir) == four and (four_dir / "summary.json").read_text() == summary
    assert resolve(yaml_path=str(four_dir / "config.yaml")).perturb_groups == 4
    assert resolve(yaml_path=str(one_dir / "config.yaml")).perturb_groups == 1


def test_held_out_best_epoch_is_reported_and_its_network_kept(tmp_path, capsys):
    """With held-out noisy data the summary names the epoch it picks (no clean label needed) and
    best_model.pt holds that epoch's network: reloaded, it scores the held-out part as logged."""
    from casam.bench import epoch_figures
    from casam.data import BatchLoader
    from casam.metrics import eval_scores, eval_sums
    from casam.models import build_model
    from casam.train import BEST_MODEL, load_data, split_validation

    out = tmp_path / "run"
    code = main([
        "train", "--dataset", "digits", "--train-subset", "1000", "--model", "mlp", "--optimizer", "sgd",
        "--epochs", "20", "--lr", "0.5", "--noise", "symmetric:0.4", "--val-fraction", "0.3",
        "--out", str(out), "--progress", "false", "--tensorboard", "false",
    ])
    assert code == 0
    history = rows(out)
    val = [r["val_acc"] for r in history]
    chosen = history[val.index(max(val))]  # the first epoch with the highest held-out accuracy
    # plain SGD at a high rate memorises the noisy labels: the held-out pick is early and beats the last epoch
    assert chosen["epoch"] < 20 and chosen["test_acc"] > history[-1]["test_acc"] + 0.03
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_best_epoch"] == chosen["epoch"] and summary["val_best_test_acc"] == chosen["test_acc"]
    assert f"at epoch {chosen['epoch']}: test accuracy there" in capsys.readouterr().out
    assert epoch_figures(read_metrics(out / "metrics.jsonl"))["val_pick_acc"] == chosen["test_acc"]  # casam bench's column agrees
    # SGD has no history: its suspects come from the picked network, which finds more mislabelled samples
    # than the last one could (that one predicts `memorization` of them as their wrong label)
    assert summary["suspects_recall"] > 1 - history[-1]["memorization"] + 0.2

    saved = torch.load(out / BEST_MODEL)
    assert saved["epoch"] == chosen["epoch"] and saved["val_acc"] == chosen["val_acc"]
    config = resolve(yaml_path=str(out / "config.yaml"))
    held_out = split_validation(config, load_data(config)[0])[1]
    model = build_model("mlp", num_classes=10, in_channels=1, image_size=tuple(held_out.images.shape[-2:]))
    model.load_state_dict(saved["model"])
    model.eval()
    scores = eval_scores(eval_sums(model, BatchLoader(held_out, batch_size=256, shuffle=False)))
    assert scores["test_acc"] == pytest.approx(chosen["val_acc"], abs=1e-6)


def test_a_resumed_run_keeps_its_held_out_pick(tmp_path, monkeypatch):
    """Killed after its held-out pick, a run resumes with the picked network in hand: the same
    best_model.pt, summary and suspects as the uninterrupted run."""
    from casam import learners
    from casam.train import BEST_MODEL

    args = [
        "train", "--dataset", "digits", "--train-subset", "1000", "--model", "mlp", "--optimizer", "sgd",
        "--epochs", "12", "--lr", "0.5", "--noise", "symmetric:0.4", "--val-fraction", "0.3",
        "--progress", "false", "--tensorboard", "false",
    ]
    assert main(args + ["--out", str(tmp_path / "whole")]) == 0
    real_step, calls = learners.SingleLearner.step, {"n": 0}
    steps_per_epoch = -(-700 // 128)

    def step(self, x, y, idx):
        calls["n"] += 1
        if calls["n"] > 8 * steps_per_epoch:  # dies in epoch 9, after the pick (epoch 4 in the whole run)
            raise KeyboardInterrupt
        return real_step(self, x, y, idx)

    monkeypatch.setattr(learners.SingleLearner, "step", step)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        main(args + ["--out", str(cut)])
    monkeypatch.undo()
    assert main(["train", "--resume", str(cut)]) == 0

    whole = tmp_path / "whole"
    assert rows(cut) == rows(whole)
    assert json.loads((whole / "summary.json").read_text())["val_best_epoch"] < 9
    def untimed(run):
        return {k: v for k, v in json.loads((run / "summary.json").read_text()).items() if not k.endswith(("time_s", "per_epoch"))}

    assert untimed(cut) == untimed(whole)
    assert (cut / "suspects.csv").read_text() == (whole / "suspects.csv").read_text()
    a, b = torch.load(cut / BEST_MODEL), torch.load(whole / BEST_MODEL)
    assert a["epoch"] == b["epoch"] and all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
