"""Attacking and judging a stochastic defense batch by batch."""

import pytest
import torch

from atop_core.attacks import AttackConfig
from atop_core.config import TransformConfig
from atop_core.defense import DefendedModel
from atop_core.harness import evaluate, judge
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


def _images(n=6):
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return x, torch.randint(0, 10, (n,), generator=g)


def test_judge_gives_one_row_per_draw_and_repeats_a_deterministic_model():
    x, y = _images(3)
    assert judge(_defense(), x.float() / 255, y, draws=4).shape == (4, 3)
    plain = judge(_defense().classifier, x.float() / 255, y, draws=4)
    assert plain.shape == (4, 3) and (plain == plain[0]).all()


def test_pgd_drives_an_undefended_overfit_classifier_to_zero():
    torch.manual_seed(0)
    model = build_classifier("small", 10, 32, width=0.25)
    x, y = _images(8)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x.float() / 255), y).backward()
        opt.step()
    clean = evaluate(model, AttackConfig(name="clean"), x, y, "whole-model", "cpu", draws=1)
    attacked = evaluate(
        model, AttackConfig(name="pgd", steps=10), x, y, "whole-model", "cpu", draws=1
    )
    assert clean["accuracy"]["single"] == 1.0 and attacked["accuracy"]["single"] == 0.0


def test_skipped_batches_continue_with_the_same_draws_as_an_uninterrupted_run():
    x, y = _images(6)
    attack = AttackConfig(name="pgd-eot", steps=1, eot=2)
    full = evaluate(_defense(), attack, x, y, "whole-model", "cpu", draws=3, batch_size=2)
    seen = []
    rest = evaluate(
        _defense(),
        attack,
        x,
        y,
        "whole-model",
        "cpu",
        draws=3,
        batch_size=2,
        skip_batches=2,
        on_batch=lambda start, correct, trace: seen.append(start),
    )
    assert seen == [4] and rest["per_sample"]["index"] == [4, 5]
    assert rest["per_sample"]["correct_draws"] == full["per_sample"]["correct_draws"][4:]


def test_unknown_protocol_is_refused():
    x, y = _images(2)
    with pytest.raises(ValueError, match="unknown protocol 'bpda'; known: whole-model"):
        evaluate(_defense(), AttackConfig(), x, y, "bpda", "cpu")
