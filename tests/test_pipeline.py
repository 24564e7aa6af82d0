"""The chain classifier -> pretraining -> AToP on a tiny self-made dataset."""

import json
import os
from pathlib import Path

import pytest
import torch

from atop_core import pipeline
from atop_core.config import DataConfig, get_profile, with_fields
from atop_core.defense import load_defense
from atop_core.nets.classifiers import build_classifier
from tests.conftest import write_tree


@pytest.fixture()
def tiny_profile(tmp_path, monkeypatch):
    write_tree(tmp_path / "data", "cifar10", per_class=4)
    monkeypatch.setenv("ATOP_DATA_DIR", str(tmp_path / "data"))
    smoke = get_profile("smoke")
    return get_profile(
        "smoke",
        data=DataConfig(n_eval=8),
        transforms=("rt1", "rt3"),
        classifier=with_fields(smoke.classifier, batch_size=16, width=0.25),
        purifier=with_fields(smoke.purifier, width=4, batch_size=16, train_subset=32),
        finetune=with_fields(smoke.finetune, batch_size=16, train_subset=16),
    )


def _refuse_training(monkeypatch):
    def refuse(*args, **kwargs):
        def step(*a):
            raise AssertionError("retrained a stage whose checkpoint was complete")

        return step

    for name in ("classifier_step", "pretrain_step", "finetune_step"):
        monkeypatch.setattr(pipeline, name, refuse)


@pytest.mark.slow
def test_chain_saves_every_defense_and_a_rerun_trains_nothing(tiny_profile, monkeypatch):
    saved = pipeline.train_chain(tiny_profile, "cifar10", torch.device("cpu"))
    names = sorted(s["file"] for s in saved)
    expected = [
        f"defense-{k}-{rt}-{a}.pt"
        for k in ("gan", "ae")
        for rt in ("rt1", "rt3")
        for a in ("plain", "atop")
    ]
    expected += ["defense-none-none-plain.pt", "defense-none-none-at-fgsm-rs.pt"]
    assert names == sorted(expected)
    folder = Path(os.environ["ATOP_HOME"]) / "checkpoints" / "smoke" / "cifar10"
    index = json.loads((folder / "defenses.json").read_text())
    assert {e["transform"]["kind"] for e in index} == {"none", "rt1", "rt3"}
    assert all(0 <= e["eval_acc_single_draw"] <= 1 and e["n_eval"] == 8 for e in index)
    # RT3 reuses the RT2-trained purifier: two pretrainings and two fine-tunings per kind
    assert len(list(folder.glob("purifier-gan-*-pretrain-*.pt"))) == 2
    assert len(list(folder.glob("purifier-gan-rt2-atop-*.pt"))) == 1
    model = load_defense(
        pipeline.defense_path(tiny_profile, "cifar10", "ae", "rt3", True), "cpu", eot=2
    )
    assert model.transform.cfg.kind == "rt3" and model.meta["atop"] is True
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    _refuse_training(monkeypatch)
    evaluated = []
    real_acc = pipeline._defense_acc
    monkeypatch.setattr(pipeline, "_defense_acc", lambda *a: evaluated.append(1) or real_acc(*a))
    again = pipeline.train_chain(tiny_profile, "cifar10", torch.device("cpu"))
    assert [s["sha256"] for s in again] == [s["sha256"] for s in saved]
    assert evaluated == []  # unchanged checkpoints: the saved defenses are reused as they are


def test_changed_config_gets_a_new_checkpoint_name(tiny_profile):
    data = pipeline.load_bundle(tiny_profile, "cifar10")
    other = get_profile("smoke", finetune=with_fields(tiny_profile.finetune, lam=0.1))
    changed = dict(tiny_profile.__dict__, finetune=other.finetune)
    assert pipeline.finetune_path(tiny_profile, "gan", "rt2", data) != pipeline.finetune_path(
        type(tiny_profile)(**changed), "gan", "rt2", data
    )


def test_user_weights_are_loaded_instead_of_training(tiny_profile, tmp_path, monkeypatch):
    data = pipeline.load_bundle(tiny_profile, "cifar10")
    source = build_classifier("small", 10, 32, width=0.25)
    torch.save(source.state_dict(), tmp_path / "mine.pt")
    cfg = with_fields(tiny_profile.classifier, weights=str(tmp_path / "mine.pt"))
    _refuse_training(monkeypatch)
    model = pipeline.get_classifier(with_fields(tiny_profile, classifier=cfg), data, "cpu")
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model(x), source.eval()(x), atol=1e-5)  # channels_last vs not


def test_baseline_sidecar_records_the_recipe_that_trained_it(tiny_profile):
    profile = with_fields(
        tiny_profile,
        classifier=with_fields(tiny_profile.classifier, epochs=2, adv_epochs=1),
        purifiers=(),
        transforms=(),
    )
    saved = pipeline.train_chain(profile, "cifar10", torch.device("cpu"))
    baseline = next(s for s in saved if s["file"] == "defense-none-none-at-fgsm-rs.pt")
    assert baseline["classifier"]["adv"] == "fgsm-rs" and baseline["classifier"]["epochs"] == 1


def test_a_chain_at_a_work_size_trains_and_reloads_at_that_size(tiny_profile):
    """The authors' up-sampling option end to end: the GAN (and its D) train at 64 px on 32-px
    images, and the reloaded defense runs at 64 px (its purifier refuses 32-px inputs)."""
    profile = with_fields(
        tiny_profile,
        purifier=with_fields(tiny_profile.purifier, work_size=64),
        purifiers=("gan",),
        transforms=("rt2",),
        baselines=(),
    )
    pipeline.train_chain(profile, "cifar10", torch.device("cpu"))
    model = load_defense(pipeline.defense_path(profile, "cifar10", "gan", "rt2", True), "cpu")
    assert model.purifier.work_size == 64 and model.meta["purifier"]["work_size"] == 64
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_checkpoint_names_tell_a_shrunk_dataset_from_the_native_one():
    def bundle(name, size):
        return pipeline.DataBundle(name, None, None, 10, size)

    assert bundle("cifar10", 32).key == "cifar10"
    assert bundle("imagenette", 128).key == "imagenette"
    assert bundle("imagenette", 32).key == "imagenette@32px"


def _trained_classifier(profile, home: Path, monkeypatch) -> dict:
    monkeypatch.setenv("ATOP_HOME", str(home))
    data = pipeline.load_bundle(profile, "cifar10")
    return pipeline.get_classifier(profile, data, torch.device("cpu")).state_dict()


def test_initial_weights_come_from_the_configs_seed_not_the_global_generator(
    tiny_profile, tmp_path, monkeypatch
):
    first = _trained_classifier(tiny_profile, tmp_path / "a", monkeypatch)
    torch.manual_seed(123)  # a notebook or an earlier stage moved the global generator
    torch.rand(10)
    again = _trained_classifier(tiny_profile, tmp_path / "b", monkeypatch)
    assert all(torch.equal(first[k], again[k]) for k in first)
    reseeded = with_fields(tiny_profile, classifier=with_fields(tiny_profile.classifier, seed=1))
    other = _trained_classifier(reseeded, tmp_path / "c", monkeypatch)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_building_a_stages_networks_leaves_the_global_generator_alone(tiny_profile):
    data = pipeline.load_bundle(tiny_profile, "cifar10")
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    pipeline._purifier_models(tiny_profile, "gan", data, torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected)


def _chain_checkpoints(profile, home: Path, monkeypatch, clock_rate: float) -> dict[str, bytes]:
    """Every checkpoint a smoke chain (AE, RT1) writes into `home`, under a clock that runs at
    `clock_rate`: a stage's wall time must not reach its checkpoint."""
    from atop_core import train

    ticks = iter(range(10**6))
    monkeypatch.setattr(train.time, "monotonic", lambda: clock_rate * next(ticks))
    monkeypatch.setenv("ATOP_HOME", str(home))
    pipeline.train_chain(profile, "cifar10", torch.device("cpu"))
    folder = home / "checkpoints" / "smoke" / "cifar10"
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.pt"))}


@pytest.mark.slow
def test_the_same_stage_run_twice_gives_byte_identical_checkpoints(
    tiny_profile, tmp_path, monkeypatch
):
    profile = with_fields(tiny_profile, purifiers=("ae",), transforms=("rt1",), baselines=())
    first = _chain_checkpoints(profile, tmp_path / "a", monkeypatch, clock_rate=1.0)
    again = _chain_checkpoints(profile, tmp_path / "b", monkeypatch, clock_rate=7.0)
    assert len(first) == 6 and first == again  # classifier, pretraining, AToP, 3 defenses
    reseeded = with_fields(profile, purifier=with_fields(profile.purifier, seed=5))
    other = _chain_checkpoints(reseeded, tmp_path / "c", monkeypatch, clock_rate=1.0)
    changed = {name for name in first if first[name] != other.get(name)}
    assert any(name.startswith("classifier-") for name in first) and not any(
        name.startswith("classifier-") for name in changed
    )
    assert {n.split("-")[0] for n in changed} >= {"purifier", "defense"}
