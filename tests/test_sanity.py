"""The gradient-masking sanity checks flag a masked model and pass an honest one."""

import torch
from torch import nn

from atop_core.attacks import AttackConfig
from atop_core.config import TransformConfig
from atop_core.defense import DefendedModel
from atop_core.sanity import sanity_checks, unreliable
from atop_core.transforms import RandomTransform


class Brightness(nn.Module):
    """A classifier that is right by construction: class 1 iff the mean pixel exceeds 0.5."""

    def forward(self, x):
        m = x.mean((1, 2, 3)) - 0.5
        return torch.stack([-m, m], 1) * 50


class Quantize(nn.Module):
    """Rounds pixels to 5 levels: zero gradient everywhere, the classic masked 'defense'."""

    def forward(self, x, keep):
        return torch.round(x * 4) / 4


def _data(n=8):
    # mean 0.3 (class 0) or 0.7 (class 1): no 8/255 attack can cross 0.5, a 0.5 one easily can
    y = torch.arange(n) % 2
    x = torch.full((n, 3, 32, 32), 0.3) + 0.4 * y.view(-1, 1, 1, 1)
    return (x * 255).round().to(torch.uint8), y


def _checks(purifier):
    model = DefendedModel(Brightness(), purifier, RandomTransform(TransformConfig(kind="none")))
    x, y = _data()
    attack = AttackConfig(name="pgd", steps=5)
    return sanity_checks(
        model, attack, x, y, "whole-model", 1.0, "cpu", draws=1, batch_size=8, square_queries=20
    )


def test_a_gradient_masked_model_is_flagged_unreliable():
    checks = _checks(Quantize())
    assert checks["large_eps"]["passed"] is False and checks["large_eps"]["accuracy"] > 0.5
    assert unreliable(checks) is True


def test_an_honest_model_passes_the_checks_that_apply():
    checks = _checks(None)
    assert checks["large_eps"]["passed"] is True and unreliable(checks) is False
    assert checks["bare_classifier"]["passed"] is None  # no purifier: nothing to compare


def test_stadv_gets_the_more_budget_check_and_says_why_not_the_large_bound():
    model = DefendedModel(Brightness(), None, RandomTransform(TransformConfig(kind="none")))
    x, y = _data()
    attack = AttackConfig(name="stadv", steps=3)
    checks = sanity_checks(
        model, attack, x, y, "whole-model", 1.0, "cpu", draws=1, batch_size=8, square_queries=20
    )
    assert checks["more_budget"]["passed"] is True and checks["more_budget"]["steps"] == 6
    assert checks["large_eps"]["passed"] is None and "16x" in checks["large_eps"]["reason"]


class Counting(nn.Module):
    """Brightness, counting its forward passes."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return Brightness()(x)


class PassThrough(nn.Module):
    def forward(self, x, keep):
        return x


def test_named_networks_share_repeated_checks_and_get_the_same_verdicts():
    """Square repeats across a defense's records and the bare check across defenses on one
    classifier: with an identity each runs once per process, and the verdicts do not change."""
    classifier = Counting()
    model = DefendedModel(classifier, PassThrough(), RandomTransform(TransformConfig(kind="none")))
    x, y = _data()

    def checks(attack, identity=None):
        classifier.calls = 0
        kw = {"draws": 1, "batch_size": 8, "square_queries": 20, "identity": identity}
        return sanity_checks(model, attack, x, y, "whole-model", 1.0, "cpu", **kw), classifier.calls

    pgd, bim = AttackConfig(name="pgd", steps=2), AttackConfig(name="bim", steps=2)
    alone, calls_alone = checks(bim)
    checks(pgd, ("defense-a", "classifier-1"))
    shared, calls_shared = checks(bim, ("defense-a", "classifier-1"))  # Square: pgd's
    assert shared == alone and calls_shared < calls_alone
    other, calls_other = checks(bim, ("defense-b", "classifier-1"))  # bare check: defense-a's
    assert other == alone and calls_shared < calls_other < calls_alone


def _near_threshold(n, survivors):
    """Images the Brightness classifier gets right; all but `survivors` sit 1/255 from its
    threshold (an 8/255 attack flips them), the rest far from it (none can)."""
    y = torch.arange(n) % 2
    offset = torch.full((n,), 1 / 255)
    offset[:survivors] = 0.2
    x = 0.5 + (2 * y - 1).float() * offset
    return (x.view(-1, 1, 1, 1).expand(n, 3, 32, 32) * 255).round().to(torch.uint8), y


def test_the_bare_classifier_check_judges_all_the_images_it_is_given():
    """One survivor among the 8 sanity images fails 'near 0' (12.5%); among 32 it passes."""
    model = DefendedModel(
        Brightness(), PassThrough(), RandomTransform(TransformConfig(kind="none"))
    )
    attack = AttackConfig(name="pgd", steps=5)
    kw = {"draws": 1, "batch_size": 8, "square_queries": 20}
    x8, y8 = _near_threshold(8, 1)
    alone = sanity_checks(model, attack, x8, y8, "whole-model", 0.0, "cpu", **kw)
    assert alone["bare_classifier"]["passed"] is False
    assert alone["bare_classifier"]["accuracy"] == 1 / 8 and alone["bare_classifier"]["n"] == 8
    bare_data = _near_threshold(32, 1)
    wider = sanity_checks(
        model, attack, x8, y8, "whole-model", 0.0, "cpu", **kw, bare_data=bare_data
    )
    assert wider["bare_classifier"] == {"passed": True, "accuracy": 1 / 32, "n": 32}
    assert wider["large_eps"] == alone["large_eps"]  # the other checks keep the 8 images
