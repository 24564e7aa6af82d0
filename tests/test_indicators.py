"""Indicators of attack failure: a defense that trips each one, and one that trips none."""

import pytest
import torch
from torch import nn

from atop_core import indicators
from atop_core.attacks import AttackConfig, run_attack
from atop_core.attacks.trace import tracing
from atop_core.config import TransformConfig
from atop_core.defense import DefendedModel
from atop_core.harness import evaluate
from atop_core.transforms import RandomTransform

PGD = AttackConfig(name="pgd-eot", steps=5, eot=1, seed=1)


class Linear(nn.Module):
    """A fixed linear classifier of 2 classes on 4x4 images: logits = scale * (w·x) * [-1, 1]."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(3 * 4 * 4, generator=g))
        self.scale = scale

    def forward(self, x):
        z = self.scale * (x.flatten(1) @ self.w)
        return torch.stack([-z, z], 1)


class Forgetful(Linear):
    """Two classes, label 0: wrong (class 1 wins) for its first `wrong_calls` forwards, right
    after: the attack sees misclassified iterates, the judge a correct returned point."""

    def __init__(self, wrong_calls: int) -> None:
        super().__init__()
        self.calls, self.wrong_calls = 0, wrong_calls

    def forward(self, x):
        self.calls += 1
        z = 1e-3 * (x.flatten(1) @ self.w)
        flip = 1.0 if self.calls <= self.wrong_calls else -1.0
        return torch.stack([-z - flip, z + flip], 1)


class LowLossWrong(Linear):
    """Ten classes, label 0. For its first `fooling_calls` forwards class 1 edges out class 0
    (misclassified, low loss); after them class 0 wins narrowly against nine close rivals
    (right, higher loss)."""

    def __init__(self, fooling_calls: int) -> None:
        super().__init__()
        self.calls, self.fooling_calls = 0, fooling_calls

    def forward(self, x):
        self.calls += 1
        z = 1e-3 * (x.flatten(1) @ self.w).unsqueeze(1)
        if self.calls <= self.fooling_calls:
            pattern = torch.tensor([0.0, 0.1] + [-10.0] * 8)
        else:
            pattern = torch.tensor([1.0] + [0.9] * 9)
        return pattern + z * torch.linspace(-1, 1, 10)


class Detached(Linear):
    def forward(self, x):
        return super().forward(x.detach())


def _images(n=8):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, 4, 4), generator=g, dtype=torch.uint8), torch.zeros(
        n, dtype=torch.long
    )


def _traced(model, attack=PGD, draws=1):
    x, y = _images()
    traces = []
    out = evaluate(
        model,
        attack,
        x,
        y,
        "whole-model",
        "cpu",
        draws=draws,
        batch_size=8,
        on_batch=lambda start, correct, trace: traces.append(trace),
    )
    trace = {"loss": [t["loss"] for t in traces]}
    for key in ("fooled", "returned_fooled"):
        if all(key in t for t in traces):
            trace[key] = [v for t in traces for v in t[key]]
    vote = [c > draws / 2 for c in out["per_sample"]["correct_draws"]]
    return trace, vote, out


def test_stadv_keeps_a_misclassified_flow_and_silent_success_reads_what_is_returned():
    # its 5 steps are wrong, the last flow's scoring pass and the judge's are right
    stadv = AttackConfig(name="stadv", steps=5, eot=1, seed=1)
    trace, vote, out = _traced(Forgetful(wrong_calls=stadv.steps), stadv)
    assert all(trace["fooled"]) and all(trace["returned_fooled"])
    assert not indicators.silent_success(trace, vote)["fired"]
    # an attack that does not say what it returns is read by the judge's vote: all right here
    unsaid = {k: v for k, v in trace.items() if k != "returned_fooled"}
    verdict = indicators.silent_success(unsaid, vote)
    assert out["accuracy"]["vote"] == 1.0 and verdict["fired"] and verdict["rate"] == 1.0
    assert "misclassified iterate" in verdict["fix"]


def test_pgd_eot_keeps_a_misclassified_iterate_over_a_higher_loss():
    # the early, misclassified iterates have the lower cross-entropy: PGD-EOT still returns one
    trace, vote, out = _traced(LowLossWrong(fooling_calls=2))
    assert all(trace["fooled"]) and all(trace["returned_fooled"])
    assert not indicators.silent_success(trace, vote)["fired"]
    lost = {**trace, "returned_fooled": [False] * len(vote)}  # an attack that had lost them
    assert indicators.silent_success(lost, vote)["fired"]


def test_a_plain_linear_classifier_trips_no_indicator():
    model = Linear(scale=0.01)
    trace, vote, out = _traced(model, AttackConfig(name="pgd-eot", steps=40, eot=1, seed=1))
    assert not indicators.silent_success(trace, vote)["fired"]
    assert not indicators.incomplete_optimisation(trace, sum(vote))["fired"]
    x, y = _images()
    x = x.float() / 255
    assert not indicators.unavailable_gradients(model, PGD, x, y, 1)["fired"]
    assert not indicators.unstable_predictions(model, x, y, 1)["fired"]


def test_incomplete_optimisation_reads_the_end_of_the_loss_curve():
    rising = {"loss": [[float(i) for i in range(1, 11)]], "fooled": [False]}
    flat = {"loss": [[1, 2, 3, 3, 3, 3, 3, 3, 3, 3]], "fooled": [False]}
    assert indicators.incomplete_optimisation(rising, survivors=1)["fired"]
    assert not indicators.incomplete_optimisation(flat, survivors=1)["fired"]
    assert indicators.incomplete_optimisation(rising, survivors=0)["fired"] is None
    assert indicators.incomplete_optimisation(None, survivors=1)["fired"] is None


def test_a_real_attack_still_climbing_is_incomplete():
    trace, vote, _ = _traced(Linear(scale=1.0), AttackConfig(name="pgd-eot", steps=3, eot=1))
    assert len(trace["loss"][0]) == 4  # three steps and the final point
    assert indicators.incomplete_optimisation(trace, sum(vote))["fired"]


def test_unavailable_gradients_fire_on_a_detached_input():
    x, y = _images()
    verdict = indicators.unavailable_gradients(Detached(), PGD, x.float() / 255, y, 1)
    assert verdict["fired"] and verdict["rate"] == 1.0 and "BPDA" in verdict["fix"]


def _noisy_defense(**transform):
    cfg = TransformConfig(kind="rt2", noise_std=0.5, missing_rate=0.25, grid=2, **transform)
    return DefendedModel(Linear(scale=2.0), None, RandomTransform(cfg, seed=0)).eval()


def test_unstable_predictions_fire_without_enough_eot_and_not_when_frozen():
    x, y = _images()
    x = x.float() / 255
    one = indicators.unstable_predictions(_noisy_defense(), x, y, eot=1)
    assert one["fired"] and one["variation"] > indicators.UNSTABLE_TOLERANCE
    needed = int(one["fix"].split("at least ")[1].split()[0])
    enough = indicators.unstable_predictions(_noisy_defense(), x, y, eot=needed)
    assert not enough["fired"]
    frozen = _noisy_defense()
    frozen.frozen = True
    assert not indicators.unstable_predictions(frozen, x, y, eot=1)["fired"]


def test_transfer_and_unconstrained_failure_come_from_the_sanity_checks():
    failed = indicators._from_check({"passed": False, "accuracy": 0.5}, "fix it")
    passed = indicators._from_check({"passed": True, "accuracy": 0.0}, "fix it")
    skipped = indicators._from_check({"passed": None, "reason": "not a purifier"}, "fix it")
    assert failed == {"fired": True, "accuracy": 0.5, "fix": "fix it"}
    assert passed == {"fired": False, "accuracy": 0.0}
    assert skipped == {"fired": None, "reason": "not a purifier"}


def test_which_indicators_mark_a_record_unreliable():
    warn = {"incomplete_optimisation": {"fired": True}, "silent_success": {"fired": False}}
    lost = {"silent_success": {"fired": True}}
    assert not indicators.marks_unreliable(warn) and indicators.marks_unreliable(lost)
    assert indicators.fired(warn) == ["incomplete_optimisation"]


def test_pgd_eot_returns_each_images_iterate_of_highest_loss():
    torch.manual_seed(0)

    class Bumpy(nn.Module):  # the loss rises, then falls along the signed-gradient path
        def forward(self, x):
            s = x.mean((1, 2, 3))
            return torch.stack([torch.zeros_like(s), 8 * torch.sin(40 * s)], 1)

    x = torch.full((1, 3, 4, 4), 0.5)
    y = torch.zeros(1, dtype=torch.long)
    cfg = AttackConfig(name="pgd-eot", steps=8, eot=1, eps=0.5, alpha=0.02, seed=0)
    model = Bumpy()
    with tracing() as trace:
        adv = run_attack(model, cfg, x, y)
    curve = trace.finish()["loss"]
    returned = torch.nn.functional.cross_entropy(model(adv), y).item()
    assert returned == pytest.approx(max(curve), rel=1e-4)
    assert max(curve) > curve[-1]  # the last iterate was not the best


class DetachedFill(nn.Module):
    """A 'purifier' whose forward is the identity and whose gradient is zero."""

    def forward(self, x, keep):
        return x.detach() + 0 * x


def _brightness_defense(purifier):
    from tests.test_sanity import Brightness

    return DefendedModel(Brightness(), purifier, RandomTransform(TransformConfig(kind="none")))


def _record_indicators(purifier, centre_gap):
    from atop_core.sanity import sanity_checks

    y = torch.arange(8) % 2
    x = (0.5 - centre_gap + 2 * centre_gap * y.view(-1, 1, 1, 1)).expand(8, 3, 32, 32)
    images = (x * 255).round().to(torch.uint8)
    model = _brightness_defense(purifier)
    attack = AttackConfig(name="pgd", steps=5)
    white = evaluate(model, attack, images, y, "whole-model", "cpu", draws=1, batch_size=8)
    checks = sanity_checks(
        model, attack, images, y, "whole-model", white["accuracy"]["single"], "cpu",
        draws=1, batch_size=8, square_queries=20,
    )  # fmt: skip
    record = {"draws": 1, "per_sample": white["per_sample"]}
    return indicators.attack_indicators(record, model, model, attack, images / 255, y, checks)


def test_a_gradient_masking_purifier_trips_the_gradient_transfer_and_unconstrained_indicators():
    # images 0.01 from the decision boundary: an 8/255 attack on the bare classifier crosses it,
    # the white-box attack through the detached purifier never moves
    out = _record_indicators(DetachedFill(), centre_gap=0.01)
    for name in ("unavailable_gradients", "transfer_failure", "unconstrained_failure"):
        assert out[name]["fired"] is True and out[name]["fix"], name
    assert indicators.marks_unreliable(out)


def test_an_honest_defense_trips_none_of_them():
    out = _record_indicators(None, centre_gap=0.2)  # no purifier: nothing masks the gradient
    assert indicators.fired(out) == []
