"""Any module evaluated as the project's own defenses are: `atop_core.evaluate`."""

import json

import pytest
import torch
from torch import nn

import atop_core
from atop_core.attacks import AttackConfig, run_attack
from atop_core.config import ClassifierConfig, TransformConfig, get_profile
from atop_core.defense import load_defense, save_defense
from atop_core.evaluation import evaluate_defense
from atop_core.nets.classifiers import build_classifier
from atop_core.user_defense import ModuleDefense
from tests.conftest import write_tree

ATTACK = {"attack": "pgd-eot", "steps": 2, "eot": 2}


@pytest.fixture()
def cifar(tmp_path, monkeypatch):
    write_tree(tmp_path / "data", "cifar10", per_class=2)
    monkeypatch.setenv("ATOP_DATA_DIR", str(tmp_path / "data"))


def _classifier() -> nn.Module:
    torch.manual_seed(0)
    return build_classifier("small", 10, 32, width=0.25).eval()


class NoisyDefense(nn.Module):
    """Gaussian noise from the global generator in front of a classifier: a random defense."""

    def __init__(self, classifier: nn.Module, sigma: float = 0.25):
        super().__init__()
        self.classifier, self.sigma = classifier, sigma

    def forward(self, x):
        return self.classifier((x + self.sigma * torch.randn_like(x)).clamp(0, 1))


def test_a_deterministic_module_scores_as_the_projects_own_path(cifar, tmp_path):
    path = tmp_path / "defense-none-none-plain.pt"
    none = TransformConfig(kind="none")
    save_defense(
        path, _classifier(), None, dataset="cifar10", num_classes=10, image_size=32,
        classifier_cfg=ClassifierConfig(width=0.25), purifier_cfg=None, transform_cfg=none,
        atop=False,
    )  # fmt: skip
    cfg = AttackConfig("pgd-eot", steps=2, eot=2, seed=1)
    ours, _ = evaluate_defense(
        path, get_profile("smoke"), cfg, protocol="whole-model", device=torch.device("cpu"), n=16,
        draws=3,
    )  # fmt: skip
    theirs = atop_core.evaluate(
        load_defense(path, "cpu").classifier, dataset="cifar10", n=16, draws=3, profile="smoke",
        **ATTACK,
    )  # fmt: skip
    assert theirs["defense"]["deterministic"] is True
    assert theirs["per_sample"] == ours["per_sample"] and theirs["accuracy"] == ours["accuracy"]
    assert theirs["schema"] == ours["schema"] and set(ours) <= set(theirs)
    assert {k: v["passed"] for k, v in theirs["sanity"].items()} == {
        k: v["passed"] for k, v in ours["sanity"].items()
    }


def test_a_random_module_is_seeded_by_the_harness_and_its_record_reproduces(cifar, tmp_path):
    model = NoisyDefense(_classifier())
    out = tmp_path / "noisy.json"
    torch.manual_seed(123)  # the caller's stream: neither consumed nor consulted
    before = torch.get_rng_state()
    first = atop_core.evaluate(
        model, dataset="cifar10", n=16, draws=4, profile="smoke", record=out, sanity=False,
        name="noisy", **ATTACK,
    )  # fmt: skip
    assert torch.equal(torch.get_rng_state(), before)
    assert first["defense"]["deterministic"] is False and first["defense"]["name"] == "noisy"
    assert json.loads(out.read_text())["per_sample"] == first["per_sample"]
    torch.manual_seed(7)
    again = atop_core.evaluate(
        model, dataset="cifar10", n=16, draws=4, profile="smoke", sanity=False, **ATTACK
    )
    assert again["per_sample"] == first["per_sample"]


def test_draws_are_fresh_repeatable_from_the_seed_and_one_when_frozen():
    defense, x = ModuleDefense(NoisyDefense(_classifier())), torch.rand(3, 3, 32, 32)
    defense.reseed(5)
    draws = defense.draw_logits(x, 2)
    assert draws.shape == (2, 3, 10) and not torch.equal(draws[0], draws[1])
    defense.reseed(5)
    assert torch.equal(defense.draw_logits(x, 2), draws)
    defense.frozen = True
    frozen = defense.draw_logits(x, 2)
    assert torch.equal(frozen[0], frozen[1]) and torch.equal(
        defense.draw_logits(x, 1)[0], frozen[0]
    )


class WrongShape(nn.Module):
    def forward(self, x):
        return torch.zeros(len(x), 5)


class NotLogits(nn.Module):
    def forward(self, x):
        return torch.full((len(x), 10), float("nan"))


@pytest.mark.parametrize(
    ("model", "says"),
    [(WrongShape(), r"to \(2, 5\); it must return logits of shape \(2, 10\)"),
     (NotLogits(), "must be finite float logits")],
)  # fmt: skip
def test_a_bad_model_is_refused_clearly_and_writes_nothing(cifar, tmp_path, model, says):
    out = tmp_path / "bad.json"
    with pytest.raises(ValueError, match=says):
        atop_core.evaluate(model, dataset="cifar10", n=16, profile="smoke", record=out, **ATTACK)
    assert not out.exists()


def test_classifier_only_needs_the_classifier_named_and_bpda_needs_a_purification(cifar, tmp_path):
    classifier = _classifier()
    with pytest.raises(ValueError, match="pass classifier=<that module>"):
        atop_core.evaluate(
            NoisyDefense(classifier), dataset="cifar10", protocol="classifier-only", n=16,
            profile="smoke", **ATTACK,
        )  # fmt: skip
    out = tmp_path / "bpda.json"
    with pytest.raises(ValueError, match="bpda-eot .* use pgd-eot"):
        atop_core.evaluate(
            NoisyDefense(classifier), dataset="cifar10", attack="bpda-eot", steps=2, eot=2, n=16,
            profile="smoke", record=out,
        )  # fmt: skip
    assert not out.exists()
    named = atop_core.evaluate(
        NoisyDefense(classifier), classifier=classifier, dataset="cifar10", n=16, draws=2,
        protocol="classifier-only", profile="smoke", sanity=False, **ATTACK,
    )  # fmt: skip
    assert named["protocol"] == "classifier-only" and named["n"] == 16


def test_the_attack_refuses_images_outside_the_unit_range():
    defense = ModuleDefense(NoisyDefense(_classifier()))
    x, y = torch.rand(2, 3, 32, 32) * 2, torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\]"):
        run_attack(defense, AttackConfig("pgd-eot", steps=1, eot=1), x, y)


def noisy_factory() -> nn.Module:
    """For the command line test: `--module tests.test_user_defense:noisy_factory`."""
    return NoisyDefense(_classifier())


def test_the_command_line_evaluates_a_module_into_a_record_beside_the_projects(cifar, capsys):
    from atop_core.__main__ import main
    from atop_core.config import settings
    from atop_core.tables import load_records_frame

    args = ["evaluate", "--profile", "smoke", "--module", "tests.test_user_defense:noisy_factory"]
    args += ["--dataset", "cifar10", "--steps", "2", "--eot", "2", "--n", "16", "--no-sanity"]
    assert main([*args, "--name", "noisy"]) == 0
    assert "noisy" in capsys.readouterr().out
    frame = load_records_frame(settings().results_dir / "smoke")
    row = frame.iloc[0]
    assert len(frame) == 1 and row["defense"] == "noisy" and row["purifier"] == "user"
    assert row["attack"] == "pgd-eot" and row["n"] == 16


def test_user_records_enter_the_claims_section_like_the_projects(cifar):
    from atop_core.claims import Arm, Comparison, decide

    classifier = _classifier()
    kw = {"dataset": "cifar10", "n": 16, "draws": 2, "profile": "smoke", "sanity": False}
    records = [
        atop_core.evaluate(NoisyDefense(classifier), name="noisy", **kw, **ATTACK),
        atop_core.evaluate(classifier, name="plain", **kw, **ATTACK),
    ]
    cfg = AttackConfig("pgd-eot", steps=2, eot=2, seed=1)
    yours = Comparison(
        "yours", "noise adds robustness", Arm("noisy", cfg, n=16), Arm("plain", cfg, n=16)
    )
    row = decide(records, [yours]).iloc[0]
    assert row["n"] == 16 and row["verdict"] == "inconclusive"
    assert "too few images" in row["reason"]
