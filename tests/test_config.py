"""Settings from the environment, devices, profiles and artifact hashes."""

from pathlib import Path

import pytest
import torch

from atop_core.config import (
    PROFILES,
    ClassifierConfig,
    DataConfig,
    EvalConfig,
    FinetuneConfig,
    PurifierConfig,
    as_dict,
    config_hash,
    get_profile,
    resolve_device,
    settings,
)


def test_settings_read_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ATOP_DATA_DIR", str(tmp_path / "d"))
    s = settings()
    assert s.data_dir == tmp_path / "d" and s.indices_dir == Path(s.home) / "indices"


def test_empty_data_dir_variable_means_unset(monkeypatch):
    monkeypatch.setenv("ATOP_DATA_DIR", "")
    assert settings().data_dir is None


def test_auto_device_is_cuda_only_when_available():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


def test_profiles_are_smoke_quick_paper():
    assert list(PROFILES) == ["smoke", "quick", "paper"]


def test_unknown_profile_lists_known_names():
    with pytest.raises(ValueError, match="unknown profile 'fast'; known: smoke, quick, paper"):
        get_profile("fast")


def test_overrides_make_a_new_validated_profile():
    assert get_profile("smoke", datasets=("cifar10",)).datasets == ("cifar10",)
    assert PROFILES["smoke"].datasets != ("cifar10",)


@pytest.mark.parametrize("field, value", [("n_eval", 0), ("train_subset", -1)])
def test_bad_data_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        DataConfig(**{field: value})


def test_config_hash_changes_with_any_field():
    assert config_hash(DataConfig(n_eval=8)) != config_hash(DataConfig(n_eval=9))
    assert config_hash(DataConfig(n_eval=8)) == config_hash(DataConfig(n_eval=8))


def test_flip_average_renames_only_the_classifiers_that_use_it():
    """Added after checkpoints were named: at its default it is left out of names and sidecars."""
    assert "flip_average" not in as_dict(ClassifierConfig())
    assert as_dict(ClassifierConfig(flip_average=True))["flip_average"] is True
    assert config_hash(ClassifierConfig()) != config_hash(ClassifierConfig(flip_average=True))


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (PurifierConfig, {"kind": "vae"}, "unknown purifier 'vae'; known: gan, ae"),
        (PurifierConfig, {"width": 0}, "purifier width must be >= 1"),
        (ClassifierConfig, {"adv": "trades"}, "unknown classifier adv 'trades'"),
        (ClassifierConfig, {"label_smoothing": 1.0}, "label_smoothing must be in \\[0, 1\\)"),
        (FinetuneConfig, {"lam": -1.0}, "lam \\(λ\\) must be >= 0"),
        (FinetuneConfig, {"attack_on": "purifier"}, "unknown attack_on 'purifier'"),
        (EvalConfig, {"eot": 0}, "steps, eot, draws, batch_size and square_queries must be >= 1"),
    ],
)
def test_bad_stage_configs_are_refused_with_the_field_named(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_unknown_override_field_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown Profile field\\(s\\) \\['purifer'\\]"):
        get_profile("smoke", purifer=None)


def test_profile_refuses_unknown_purifier_and_transform_names():
    with pytest.raises(ValueError, match="unknown purifier 'diffusion'"):
        get_profile("smoke", purifiers=("gan", "diffusion"))
    with pytest.raises(ValueError, match="unknown transform kind 'rt9'"):
        get_profile("smoke", transforms=("rt9",))


def test_a_dataset_runs_with_its_own_changes_and_the_others_without():
    quick = get_profile("quick")
    imagenette = quick.for_dataset("imagenette")
    assert imagenette.data.max_size == 32 and imagenette.classifier.epochs == 16
    assert imagenette.data.n_eval == quick.data.n_eval  # a section keeps the fields not named
    assert imagenette.baselines == () and imagenette.claims == ("C1", "C5")
    assert imagenette.for_dataset("imagenette") == imagenette  # applied once, nothing left
    cifar = quick.for_dataset("cifar10")
    assert cifar.data == quick.data and cifar.classifier == quick.classifier
    assert cifar.baselines == quick.baselines and cifar.claims == quick.claims


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"data": {"max_size": -1}}, "per_dataset\\['imagenette'\\]: max_size must be >= 0"),
        ({"data": {"max_px": 64}}, "unknown DataConfig field\\(s\\) \\['max_px'\\]"),
        ({"classifer": {"epochs": 2}}, "unknown Profile field\\(s\\) \\['classifer'\\]"),
        ({"claims": ("C7",)}, "unknown claims \\['C7'\\]"),
    ],
)
def test_bad_per_dataset_changes_are_refused_naming_the_dataset_and_field(changes, message):
    with pytest.raises(ValueError, match=message):
        get_profile("quick", per_dataset={"imagenette": changes})
