"""Attacks by name and the judging of a stochastic defense."""

import pytest
import torch

from atop_core.attacks import ATTACKS, AttackConfig, eot_loss, run_attack
from atop_core.config import TransformConfig
from atop_core.defense import DefendedModel
from atop_core.evaluate import evaluate, summarize, wilson_interval
from atop_core.nets.classifiers import build_classifier
from atop_core.nets.purifiers import build_purifier
from atop_core.transforms import RandomTransform


def _defense(seed=0):
    torch.manual_seed(0)
    return DefendedModel(
        build_classifier("small", 10, 32, width=0.25),
        build_purifier("ae", width=4, image_size=32),
        RandomTransform(TransformConfig(), seed=seed),
    ).eval()


def _batch(n=4):
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_wilson_interval_matches_known_values():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0


def test_summary_separates_single_vote_and_worst():
    correct = torch.tensor([[True, True, False], [True, False, False], [True, True, True]])
    s = summarize(correct)
    assert s["accuracy"] == {"single": 2 / 3, "vote": 2 / 3, "worst": 1 / 3}
    assert s["per_sample"]["correct_draws"] == [3, 2, 1]


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_stays_in_the_eps_ball_and_pixel_range(name):
    x, y = _batch()
    cfg = AttackConfig(name=name, eps=8 / 255, steps=2, eot=2)
    adv = run_attack(_defense(), cfg, x, y)
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6


def test_eot_gradient_equals_the_mean_of_per_draw_gradients():
    x, y = _batch(2)
    batched = _defense(seed=4)
    xb = x.clone().requires_grad_(True)
    (g_batched,) = torch.autograd.grad(eot_loss(batched, xb, y, 3), xb)
    single = _defense(seed=4)
    copies = x.repeat(3, 1, 1, 1).requires_grad_(True)  # the same draws, one copy each
    loss = eot_loss(single, copies, y.repeat(3), 1) / 3
    (g_copies,) = torch.autograd.grad(loss, copies)
    assert torch.allclose(g_batched, g_copies.view(3, *x.shape).sum(0), atol=1e-6)


def test_reseeding_global_rng_inside_an_attack_leaves_defense_draws_unchanged():
    x, y = _batch(2)
    a, b = _defense(seed=1), _defense(seed=1)
    run_attack(a, AttackConfig(name="pgd", steps=1, seed=5), x, y)
    run_attack(b, AttackConfig(name="pgd", steps=1, seed=6), x, y)
    assert torch.equal(a.purify(x), b.purify(x))


def test_pgd_drives_an_undefended_overfit_classifier_to_zero():
    torch.manual_seed(0)
    model = build_classifier("small", 10, 32, width=0.25)
    x, y = _batch(8)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    images = (x * 255).round().to(torch.uint8)
    clean = evaluate(model, AttackConfig(name="clean"), images, y, "whole-model", "cpu", draws=1)
    attacked = evaluate(
        model, AttackConfig(name="pgd", steps=10), images, y, "whole-model", "cpu", draws=1
    )
    assert clean["accuracy"]["single"] == 1.0 and attacked["accuracy"]["single"] == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "deepfool"}, "unknown attack 'deepfool'; known: clean, fgsm, pgd, pgd-eot"),
        ({"eps": -0.1}, "eps must be >= 0"),
    ],
)
def test_bad_attack_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AttackConfig(**kwargs)


def test_unknown_protocol_is_refused():
    x, y = _batch(2)
    with pytest.raises(ValueError, match="unknown protocol 'bpda'"):
        evaluate(_defense(), AttackConfig(), (x * 255).byte(), y, "bpda", "cpu")


def test_out_of_range_images_are_refused():
    x, y = _batch(2)
    with pytest.raises(ValueError, match="images must lie in \\[0, 1\\]"):
        run_attack(_defense(), AttackConfig(), x * 2, y)
