import pytest

from casam.config import ConfigError, TrainConfig, resolve, save_yaml


def test_defaults_are_valid_and_are_the_main_job():
    config = resolve()
    assert (config.dataset, config.noise, config.optimizer) == ("fashion-mnist", "symmetric:0.5", "casam")


def test_yaml_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nlr: 0.1\noptimizer: sam\nmilestones: [1, 2]\n")
    config = resolve(yaml_path=str(path), overrides={"lr": "0.5", "tensorboard": "false"})
    assert config.epochs == 3 and config.optimizer == "sam" and config.milestones == [1, 2]
    assert config.lr == 0.5 and config.tensorboard is False


def test_saved_config_round_trips(tmp_path):
    config = resolve(overrides={"rho": "0.1", "train_subset": "none", "milestones": "2,3"})
    save_yaml(config, tmp_path / "config.yaml")
    again = resolve(yaml_path=str(tmp_path / "config.yaml"))
    assert again == config and again.train_subset is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"epochs": "ten"}, "epochs must be an integer; got 'ten'"),
        ({"epochs": "2.5"}, "epochs must be an integer"),
        ({"lr": "fast"}, "lr must be a number"),
        ({"rho": "-0.1"}, "rho must be >= 0"),
        ({"optimizer": "adam"}, "optimizer must be one of sgd, sam, asam, casam; got 'adam'"),
        ({"noise": "gaussian:0.2"}, "noise"),
        ({"noise": "symmetric:1.5"}, "noise"),
        ({"history_beta": "1.0"}, "history_beta must be in"),
        ({"history_slow_beta": "0.9"}, "history_slow_beta must be in .history_beta, 1. = .0.9, 1. or none"),
        ({"history_slow_beta": "0.97", "criterion": "gmm"}, "works with criterion agreement only"),
        ({"perturb_groups": "0"}, "perturb_groups must be at least 1; got 0"),
        ({"perturb_groups": "4", "log_cosine": "true"}, "perturb_groups above 1 runs without a gradient scaler and without log_cosine"),
        ({"tensorboard": "maybe"}, "tensorboard must be true or false"),
        ({"dataset": "mnist"}, "dataset must be one of"),
        ({"precision": "fp16", "device": "cpu"}, "fp16 needs a CUDA device"),
        ({"perturb_cutoff": "0"}, "must be in (0, 1] or none"),
        ({"perturb_weight": "0.5", "perturb_cutoff": "1.5"}, "must be in (0, 1] or none"),
        ({"perturb_from": "confidence"}, "takes no perturb_weight"),
        ({"heavy_warmup": "2"}, "heavy_warmup extends the warm-up: 0 or more than warmup .2. epochs; got 2"),
        ({"heavy_warmup": "5", "perturb_cutoff": "none"}, "give perturb_cutoff too"),
        ({"history_from": "2"}, "history_from must be below warmup .2.: the split needs a history when the warm-up ends; got 2"),
        ({"history_from": "-1"}, "history_from must be >= 0"),
        ({"heavy_criterion": "loss"}, "heavy_criterion must be auto, none or one of agreement"),
        ({"heavy_criterion": "small-loss", "perturb_cutoff": "none"}, "heavy_criterion applies when the noise estimate is above perturb_cutoff"),
        ({"heavy_groups": "0"}, "heavy_groups must be auto, none or at least 1; got 0"),
        ({"heavy_groups": "many"}, "heavy_groups must be auto, none or at least 1; got 'many'"),
        ({"heavy_groups": "1", "perturb_cutoff": "none"}, "heavy_groups applies when the noise estimate is above perturb_cutoff"),
        ({"heavy_groups": "4", "log_cosine": "true"}, "heavy_groups above 1 runs without a gradient scaler"),
        ({"heavy_noisy_weight": "1.5"}, "heavy_noisy_weight .lambda under heavy noise. must be auto, none or in .0, 1.; got 1.5"),
        ({"heavy_noisy_weight": "half"}, "heavy_noisy_weight .* got 'half'"),
        ({"heavy_noisy_weight": "0", "perturb_cutoff": "none"}, "heavy_noisy_weight applies when the noise estimate is above perturb_cutoff"),
        ({"history_loss": "ce"}, "history_loss must be one of cross-entropy, training"),
        ({"loss": "gce", "gce_q": "2"}, "gce_q must be in"),
        ({"loss": "elr", "elr_beta": "1"}, "elr_beta must be in"),
        ({"loss": "sce", "sce_alpha": "-1"}, "sce_alpha must be"),
    ],
)
def test_bad_values_are_refused_with_one_sentence(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as info:
        resolve(overrides=overrides)
    assert "\n" not in str(info.value)


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown option 'epoch'"):
        (tmp_path / "a.yaml").write_text("epoch: 3\n")
        resolve(yaml_path=str(tmp_path / "a.yaml"))
    with pytest.raises(ConfigError, match="epochs must be an integer"):
        (tmp_path / "b.yaml").write_text("epochs: [1]\n")
        resolve(yaml_path=str(tmp_path / "b.yaml"))
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(yaml_path=str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        (tmp_path / "c.yaml").write_text("- 1\n- 2\n")
        resolve(yaml_path=str(tmp_path / "c.yaml"))
    assert TrainConfig().epochs == 40


def test_a_run_saved_before_an_option_existed_is_read_as_it_ran(tmp_path):
    """A run's config.yaml from before CA-SAM's mu and cutoff existed ran with mu 0: resuming or comparing
    it must not pick up today's defaults (0.5, 0.6667), while a user's --config file does."""
    import yaml

    path = tmp_path / "config.yaml"
    save_yaml(TrainConfig(optimizer="casam"), path)
    old = yaml.safe_load(path.read_text())
    del old["perturb_weight"], old["perturb_cutoff"]
    path.write_text(yaml.safe_dump(old))
    as_run = resolve(yaml_path=str(path), run_file=True)
    assert (as_run.perturb_weight, as_run.perturb_cutoff) == (0.0, None)
    as_user_file = resolve(yaml_path=str(path))
    assert (as_user_file.perturb_weight, as_user_file.perturb_cutoff) == (TrainConfig().perturb_weight, TrainConfig().perturb_cutoff) == (0.5, 0.6667)


def test_a_loss_setting_for_another_loss_is_refused_and_published_values_are_the_default():
    with pytest.raises(ConfigError, match="gce_q only applies with loss gce, not loss elr"):
        resolve(overrides={"loss": "elr", "gce_q": "0.5"}, strict=True)
    assert resolve(overrides={"loss": "elr"}).loss_options() == {}  # the published values apply
    assert resolve(overrides={"loss": "elr", "elr_lambda": "7"}).loss_options() == {"lam": 7.0}
    assert resolve(overrides={"loss": "elr", "dataset": "cifar100"}).loss_preset() == "cifar100"


def test_casam_lambda_default_depends_on_the_loss_and_is_saved_resolved(tmp_path):
    assert resolve(overrides={"loss": "elr"}).noisy_weight == 1.0  # round 12
    assert resolve(overrides={"loss": "sce"}).noisy_weight == 1.0  # round 16
    assert resolve(overrides={"loss": "ce"}).noisy_weight == resolve(overrides={"loss": "gce"}).noisy_weight == 0.5
    assert resolve(overrides={"loss": "elr", "noisy_weight": "0.5"}).noisy_weight == 0.5  # a given value stays
    assert TrainConfig(loss="elr").noisy_weight is None and TrainConfig(loss="elr").validate().noisy_weight == 1.0
    save_yaml(resolve(overrides={"loss": "elr"}), tmp_path / "config.yaml")
    assert "noisy_weight: 1.0" in (tmp_path / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="noisy_weight only applies with optimizer casam"):
        resolve(overrides={"optimizer": "sgd", "loss": "elr", "noisy_weight": "1"}, strict=True)


def test_rho_default_is_asams_published_half_with_asam_and_005_otherwise(tmp_path):
    assert resolve(overrides={"optimizer": "asam"}).rho == 0.5  # relative to the weights' scale (baselines' round 5)
    assert resolve(overrides={"optimizer": "sam"}).rho == resolve(overrides={"optimizer": "casam"}).rho == 0.05
    assert resolve(overrides={"optimizer": "asam", "rho": "0.2"}).rho == 0.2  # a given value stays
    assert TrainConfig(optimizer="asam").rho is None and TrainConfig(optimizer="asam").validate().rho == 0.5
    save_yaml(resolve(overrides={"optimizer": "asam"}), tmp_path / "config.yaml")
    assert "rho: 0.5" in (tmp_path / "config.yaml").read_text()
    assert resolve(yaml_path=str(tmp_path / "config.yaml"), overrides={"optimizer": "sam"}).rho == 0.5  # a saved run repeats


def test_casam_heavy_criterion_default_depends_on_the_loss_and_the_switch_and_is_saved_resolved(tmp_path):
    """Round 29: with cross-entropy the split's criterion under heavy noise is small-loss (round 31: with ELR too);
    SCE, other losses (not measured), a run without the noise switch or with the two-speed memory (agreement's) keep their criterion."""
    casam = {"optimizer": "casam"}
    assert resolve(overrides={**casam, "loss": "ce"}).heavy_criterion == "small-loss"
    assert resolve(overrides={**casam, "loss": "elr"}).heavy_criterion == "small-loss"  # round 31, with lambda 0.5
    assert resolve(overrides={**casam, "loss": "sce"}).heavy_criterion is None  # round 31: level
    assert resolve(overrides={**casam, "loss": "gce"}).heavy_criterion is None  # not measured
    assert resolve(overrides={**casam, "perturb_cutoff": "none"}).heavy_criterion is None
    assert resolve(overrides={**casam, "history_slow_beta": "0.97"}).heavy_criterion is None
    assert resolve(overrides={"optimizer": "sgd"}).heavy_criterion is None
    assert resolve(overrides={**casam, "heavy_criterion": "none"}).heavy_criterion is None  # a given value stays
    assert resolve(overrides={**casam, "loss": "elr", "heavy_criterion": "gmm"}).heavy_criterion == "gmm"
    save_yaml(resolve(overrides=casam), tmp_path / "config.yaml")
    assert "heavy_criterion: small-loss" in (tmp_path / "config.yaml").read_text()
    assert resolve(yaml_path=str(tmp_path / "config.yaml"), run_file=True).heavy_criterion == "small-loss"


def test_casam_heavy_noisy_weight_default_is_half_with_elr(tmp_path):
    """Round 31: with ELR's loss (lambda 1) a run with the noise switch takes lambda 0.5 and the small-loss split
    under heavy noise; SCE (measured: level) and other losses (not measured) keep theirs, as does a run
    without the switch. Saved resolved."""
    elr = {"optimizer": "casam", "loss": "elr"}
    config = resolve(overrides=elr)
    assert (config.noisy_weight, config.heavy_noisy_weight, config.heavy_criterion) == (1.0, 0.5, "small-loss")
    assert resolve(overrides={**elr, "loss": "ce"}).heavy_noisy_weight is None
    assert resolve(overrides={**elr, "loss": "sce"}).heavy_noisy_weight is None
    assert resolve(overrides={**elr, "perturb_cutoff": "none"}).heavy_noisy_weight is None
    assert resolve(overrides={"optimizer": "sam", "loss": "elr"}).heavy_noisy_weight is None
    assert resolve(overrides={**elr, "heavy_noisy_weight": "none"}).heavy_noisy_weight is None  # given values stay
    assert resolve(overrides={**elr, "heavy_noisy_weight": "0"}).heavy_noisy_weight == 0.0
    save_yaml(config, tmp_path / "config.yaml")
    assert "heavy_noisy_weight: 0.5" in (tmp_path / "config.yaml").read_text()
    assert resolve(yaml_path=str(tmp_path / "config.yaml"), run_file=True).heavy_noisy_weight == 0.5


def test_casam_rho_with_elr_is_002_below_the_cutoff_and_005_above_it(tmp_path):
    """Rounds 33-34: CA-SAM+ELR takes rho 0.02 and, with the noise switch, 0.05 under heavy noise; other losses
    (and SAM with ELR) keep 0.05 throughout. Where the heavy radius would be rho anyway it resolves to none."""
    elr = {"optimizer": "casam", "loss": "elr"}
    config = resolve(overrides=elr)
    assert (config.rho, config.heavy_rho) == (0.02, 0.05)
    ce = resolve(overrides={**elr, "loss": "ce"})
    assert (ce.rho, ce.heavy_rho) == (0.05, None)
    assert resolve(overrides={"optimizer": "sam", "loss": "elr"}).rho == 0.05
    no_switch = resolve(overrides={**elr, "perturb_cutoff": "none"})
    assert (no_switch.rho, no_switch.heavy_rho) == (0.02, None)
    assert resolve(overrides={**elr, "rho": "0.05"}).heavy_rho is None  # 0.05 throughout
    assert resolve(overrides={**elr, "rho": "0.1"}).heavy_rho == 0.05
    assert resolve(overrides={**elr, "heavy_rho": "none"}).heavy_rho is None  # a given value stays
    save_yaml(config, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "\nrho: 0.02\n" in text and "heavy_rho: 0.05" in text


def test_heavy_rho_is_saved_needs_the_switch_and_old_runs_read_as_none(tmp_path):
    """heavy_rho: the radius under heavy noise; a given value stays and is saved, it needs the noise switch and
    CA-SAM, and a run folder made before the option reads back as none (rho throughout)."""
    casam = {"optimizer": "casam"}
    assert resolve(overrides=casam).heavy_rho is None  # cross-entropy: rho throughout
    config = resolve(overrides={**casam, "heavy_rho": "0.1"})
    assert config.heavy_rho == 0.1
    with pytest.raises(ConfigError, match="heavy_rho applies when the noise estimate is above perturb_cutoff"):
        resolve(overrides={**casam, "perturb_cutoff": "none", "heavy_rho": "0.1"})
    with pytest.raises(ConfigError, match="heavy_rho only applies with optimizer casam"):
        resolve(overrides={"optimizer": "sam", "heavy_rho": "0.1"}, strict=True)
    with pytest.raises(ConfigError, match="heavy_rho .the radius under heavy noise. must be auto, none or a number >= 0"):
        resolve(overrides={**casam, "heavy_rho": "-1"})
    save_yaml(config, tmp_path / "config.yaml")
    assert "heavy_rho: 0.1" in (tmp_path / "config.yaml").read_text()
    (tmp_path / "old.yaml").write_text((tmp_path / "config.yaml").read_text().replace("heavy_rho: 0.1\n", ""))
    assert resolve(yaml_path=str(tmp_path / "old.yaml"), run_file=True).heavy_rho is None


def test_history_loss_defaults_to_cross_entropy_and_old_runs_read_as_training(tmp_path):
    """Round 32: the history records the cross-entropy on the given label unless told otherwise, saved in the
    run's config; a run folder made before the option read back as what it ran with, the training loss."""
    config = resolve(overrides={"optimizer": "casam", "loss": "elr"})
    assert config.history_loss == "cross-entropy"
    save_yaml(config, tmp_path / "config.yaml")
    assert "history_loss: cross-entropy" in (tmp_path / "config.yaml").read_text()
    old = (tmp_path / "config.yaml").read_text().replace("history_loss: cross-entropy\n", "")
    (tmp_path / "old.yaml").write_text(old)
    assert resolve(yaml_path=str(tmp_path / "old.yaml"), run_file=True).history_loss == "training"
    assert resolve(yaml_path=str(tmp_path / "old.yaml")).history_loss == "cross-entropy"  # a plain config file: today's default


def test_casam_heavy_groups_default_is_one_perturbation_in_grouped_runs_with_cross_entropy(tmp_path):
    """Round 30: a run that takes perturbation groups with cross-entropy takes one perturbation under heavy
    noise; runs without groups (shorter, ELR, SCE) or without the noise switch have nothing to replace, and
    other losses (not measured) keep their groups. "auto" reads as a word, a number as a number."""
    casam = {"optimizer": "casam"}  # the main job's 40 epochs: 8 groups
    assert resolve(overrides=casam).heavy_groups == 1
    assert resolve(overrides={**casam, "epochs": "20"}).heavy_groups is None
    assert resolve(overrides={**casam, "loss": "elr"}).heavy_groups is None
    assert resolve(overrides={**casam, "loss": "gce"}).heavy_groups is None
    assert resolve(overrides={**casam, "perturb_cutoff": "none"}).heavy_groups is None
    assert resolve(overrides={**casam, "epochs": "20", "perturb_groups": "4"}).heavy_groups == 1
    assert resolve(overrides={**casam, "heavy_groups": "none"}).heavy_groups is None  # given values stay
    assert resolve(overrides={**casam, "heavy_groups": "2"}).heavy_groups == 2
    assert resolve(overrides={**casam, "heavy_groups": "auto"}).heavy_groups == 1
    save_yaml(resolve(overrides=casam), tmp_path / "config.yaml")
    assert "heavy_groups: 1" in (tmp_path / "config.yaml").read_text()
    assert resolve(yaml_path=str(tmp_path / "config.yaml"), run_file=True).heavy_groups == 1


def test_casam_perturb_groups_default_depends_on_the_run_length_and_is_saved_resolved(tmp_path, monkeypatch):
    """docs/casam-split.md, rounds 21 and 24: 8 groups in runs of 30 epochs or more (casam train's own
    default is 40), one perturbation in shorter runs and wherever groups cannot run; a given value always stays."""
    import yaml

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve().perturb_groups == 8  # the main job: 40 epochs
    assert resolve(overrides={"epochs": "30"}).perturb_groups == 8
    assert resolve(overrides={"epochs": "29"}).perturb_groups == resolve(overrides={"epochs": "20"}).perturb_groups == 1
    assert resolve(overrides={"perturb_groups": "1"}).perturb_groups == 1
    assert resolve(overrides={"epochs": "20", "perturb_groups": "4"}).perturb_groups == 4
    for cannot_group in ({"optimizer": "sam"}, {"log_cosine": "true"}, {"device": "cuda", "precision": "fp16"}):
        assert resolve(overrides=cannot_group).perturb_groups == 1, cannot_group
    for robust in ("elr", "sce"):  # round 23: level with ELR, behind with SCE
        assert resolve(overrides={"loss": robust}).perturb_groups == 1, robust
    assert resolve(overrides={"loss": "gce"}).perturb_groups == 8  # not measured: cross-entropy's default
    assert resolve(overrides={"loss": "elr", "perturb_groups": "8"}).perturb_groups == 8
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun: the default picks 1, an explicit G > 1 is refused before any process group
    assert resolve().perturb_groups == 1
    with pytest.raises(ConfigError, match="perturb_groups above 1 runs in one process"):
        resolve(overrides={"perturb_groups": "8"})
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE must be an integer"):
        resolve()
    monkeypatch.delenv("WORLD_SIZE")
    save_yaml(resolve(), tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["perturb_groups"] == 8
    del saved["perturb_groups"]  # a run from before round 19 ran with one perturbation
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert resolve(yaml_path=str(tmp_path / "config.yaml"), run_file=True).perturb_groups == 1
