"""The speed-ups `python -m bench` measures leave results unchanged: EOT draws in one pass, in
passes of a few draws, or looped one at a time (the authors' structure) give the same gradient for
the same transform draws, and channels_last gives the same gradient as the default layout, for
attacks and for purifier training."""

import pytest
import torch
from torch import Tensor

from atop_core.attacks import AttackConfig, eot_grad, eot_loss, run_attack
from atop_core.attacks.eot import projected_gradient
from atop_core.config import TransformConfig
from atop_core.defense import DefendedModel
from atop_core.nets.classifiers import build_classifier
from atop_core.nets.purifiers import PURIFIERS, build_discriminator, build_purifier
from atop_core.train import l_df
from atop_core.transforms import RandomTransform, block_mask

SIZE, BATCH, DRAWS = 16, 3, 4
RTOL, ATOL = 1e-4, 1e-6  # float32 sums taken in a different order


class ReplayTransform(RandomTransform):
    """RT2 whose noise and masks were drawn in advance and are handed out row by row in call
    order, so a batched pass and a loop of passes see exactly the same draws."""

    def __init__(self, noise: Tensor, keep: Tensor) -> None:
        super().__init__(TransformConfig(kind="rt2"))
        self.noise, self.keep, self.used = noise, keep, 0

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        rows = slice(self.used, self.used + len(x))
        self.used += len(x)
        keep = self.keep[rows]
        return (x + self.cfg.noise_std * self.noise[rows]).clamp(0, 1) * keep, keep


def _nets(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    classifier = build_classifier("small", 10, SIZE, width=0.25)
    return classifier, build_purifier(kind, width=4, image_size=SIZE)


def _inputs(seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((BATCH, 3, SIZE, SIZE), generator=g)
    return x, torch.randint(0, 10, (BATCH,), generator=g)


def _replayed(kind: str) -> DefendedModel:
    g = torch.Generator().manual_seed(2)
    noise = torch.randn((DRAWS * BATCH, 3, SIZE, SIZE), generator=g)
    keep = block_mask(DRAWS * BATCH, SIZE, 8, 0.25, g)
    classifier, purifier = _nets(kind)
    return DefendedModel(classifier, purifier, ReplayTransform(noise, keep)).eval()


@pytest.mark.parametrize("kind", sorted(PURIFIERS))
def test_batched_eot_gradient_equals_looped_eot_gradient_for_the_same_draws(kind):
    x, y = _inputs()
    batched = eot_grad(eot_loss, _replayed(kind), x, y, DRAWS, pass_size=None)
    looped = eot_grad(eot_loss, _replayed(kind), x, y, DRAWS, pass_size=1)  # a draw per pass
    assert batched.abs().sum() > 0
    torch.testing.assert_close(batched, looped, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("pass_size", [BATCH, 2 * BATCH, 3 * BATCH])  # 1, 2 and 3(+1) draws
def test_eot_gradient_in_passes_equals_one_pass_gradient(pass_size):
    x, y = _inputs()
    one_pass = eot_grad(eot_loss, _replayed("gan"), x, y, DRAWS, pass_size=None)
    chunked = eot_grad(eot_loss, _replayed("gan"), x, y, DRAWS, pass_size=pass_size)
    torch.testing.assert_close(chunked, one_pass, rtol=RTOL, atol=ATOL)


def _defense(kind: str, channels_last: bool, work_size: int = 0) -> DefendedModel:
    torch.manual_seed(0)
    classifier = build_classifier("small", 10, SIZE, width=0.25)
    purifier = build_purifier(kind, width=4, image_size=SIZE, work_size=work_size)
    model = DefendedModel(classifier, purifier, RandomTransform(TransformConfig(), seed=3)).eval()
    return model.to(memory_format=torch.channels_last) if channels_last else model


@pytest.mark.parametrize("kind", sorted(PURIFIERS))
@pytest.mark.parametrize("work_size", [0, 2 * SIZE])
def test_channels_last_gives_the_default_layouts_gradient(kind, work_size):
    x, y = _inputs()
    default = eot_grad(eot_loss, _defense(kind, False, work_size), x, y, DRAWS)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    model_cl = _defense(kind, True, work_size)
    weight = next(model_cl.purifier.parameters())
    assert weight.is_contiguous(memory_format=torch.channels_last)
    fast = eot_grad(eot_loss, model_cl, x_cl, y, DRAWS)
    torch.testing.assert_close(fast, default, rtol=RTOL, atol=ATOL)


def _training_loss_and_grads(kind: str, channels_last: bool) -> tuple[Tensor, list[Tensor]]:
    torch.manual_seed(0)
    purifier = build_purifier(kind, width=4, image_size=SIZE)
    disc = build_discriminator(width=4, image_size=SIZE) if kind == "gan" else None
    x, _ = _inputs()
    if channels_last:
        purifier = purifier.to(memory_format=torch.channels_last)
        disc = disc.to(memory_format=torch.channels_last) if disc is not None else None
        x = x.contiguous(memory_format=torch.channels_last)
    copies, keep = RandomTransform(TransformConfig(), seed=3)(x)
    loss, _, _ = l_df(purifier, disc, copies, keep, x, gan_weight=1.0)
    return loss, list(torch.autograd.grad(loss, list(purifier.parameters())))


@pytest.mark.parametrize("kind", sorted(PURIFIERS))
def test_channels_last_purifier_training_gives_the_default_layouts_loss_and_gradients(kind):
    """The AE trains in channels_last (`train.purifier_layout`); the GAN is checked as well."""
    loss, grads = _training_loss_and_grads(kind, channels_last=False)
    loss_cl, grads_cl = _training_loss_and_grads(kind, channels_last=True)
    torch.testing.assert_close(loss_cl, loss, rtol=RTOL, atol=ATOL)
    for fast, default in zip(grads_cl, grads, strict=True):
        torch.testing.assert_close(fast, default, rtol=RTOL, atol=ATOL)


def test_pgd_eot_attack_in_passes_matches_one_pass_for_the_same_draws():
    x, y = _inputs()
    # one step and the last iterate scored: all the draws
    cfg = AttackConfig(name="pgd-eot", steps=1, eot=DRAWS // 2, seed=5)
    one_pass = projected_gradient(eot_loss, _replayed("gan"), x, y, cfg, pass_size=None)
    passes = projected_gradient(eot_loss, _replayed("gan"), x, y, cfg, pass_size=BATCH)
    torch.testing.assert_close(passes, one_pass, rtol=0, atol=1e-6)
    library = run_attack(_replayed("gan"), cfg, x, y)  # the registry's pgd-eot is this loop
    torch.testing.assert_close(library, one_pass, rtol=0, atol=1e-6)
    assert (one_pass - x).abs().max() > 0


def test_inference_mode_judging_matches_no_grad():
    x, y = _inputs()
    model = _defense("gan", True)
    with torch.no_grad():
        reference = model.draw_logits(x, DRAWS)
    model.transform.seed()  # the same draws again
    with torch.inference_mode():
        fast = model.draw_logits(x, DRAWS)
    torch.testing.assert_close(fast, reference)
