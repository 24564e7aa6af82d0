"""Purifiers: the shared interface, the GAN's discriminator and losses, and that each net learns."""

import pytest
import torch
import torch.nn.functional as F

from atop_core.nets.gan import d_hinge_loss, discriminator_layers, g_hinge_loss
from atop_core.nets.purifiers import (
    PURIFIERS,
    build_discriminator,
    build_purifier,
    resize_to,
    to_work_size,
)

STAGES = {"gan": 2, "ae": 1}
WIDTH = 8  # tiny nets keep the suite fast on two CPU cores


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets run several times faster on one thread than on two contended cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(n: int = 2, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth images in [0, 1] (learnable, unlike pixel noise) and a 4-pixel block keep-mask."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, 3, size // 4, size // 4), generator=g)
    x = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    blocks = (torch.rand((n, 1, size // 4, size // 4), generator=g) > 0.25).float()
    keep = blocks.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    return x, keep


@pytest.mark.parametrize("kind", sorted(PURIFIERS))
def test_purifier_output_has_input_shape_and_lies_in_unit_range(kind):
    torch.manual_seed(0)
    x, keep = _batch()
    out = build_purifier(kind, width=WIDTH, image_size=16)(x * keep, keep)
    assert out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("kind", sorted(PURIFIERS))
def test_stages_lists_every_stage_as_a_full_image(kind):
    torch.manual_seed(0)
    x, keep = _batch()
    net = build_purifier(kind, width=WIDTH, image_size=16)
    outs = net.stages(x * keep, keep)
    assert len(outs) == STAGES[kind]
    assert all(o.shape == x.shape for o in outs)
    assert torch.equal(outs[-1], net(x * keep, keep))


@pytest.mark.parametrize("kind", sorted(PURIFIERS))
def test_purifier_ignores_values_under_missing_pixels(kind):
    torch.manual_seed(0)
    x, keep = _batch()
    net = build_purifier(kind, width=WIDTH, image_size=16)
    assert torch.allclose(net(x * keep, keep), net(x, keep))


@pytest.mark.parametrize("kind", sorted(PURIFIERS))
def test_a_work_size_purifier_runs_at_that_size_and_refuses_native_inputs(kind):
    torch.manual_seed(0)
    net = build_purifier(kind, width=WIDTH, image_size=32, work_size=64)
    x, keep = _batch(n=1, size=64)
    outs = net.stages(x * keep, keep)
    assert [o.shape for o in outs] == [x.shape] * STAGES[kind]
    small, small_keep = _batch(n=1, size=32)
    with pytest.raises(ValueError, match=r"works at 64×64 .* got 32×32: up-sample with to_work"):
        net(small * small_keep, small_keep)


def test_to_work_size_resizes_only_for_a_purifier_with_a_work_size():
    x, _ = _batch(n=1, size=32)
    assert to_work_size(x, build_purifier("ae", width=WIDTH, image_size=32)) is x
    assert to_work_size(x, None) is x
    big = to_work_size(x, build_purifier("ae", width=WIDTH, image_size=32, work_size=64))
    assert big.shape[-2:] == (64, 64) and big.min() >= 0 and big.max() <= 1
    assert resize_to(big, (32, 32)).shape == x.shape


def test_discriminator_gives_finite_patch_scores_with_a_gradient():
    torch.manual_seed(0)
    x, keep = _batch(size=32)
    x.requires_grad_(True)
    scores = build_discriminator(width=WIDTH, image_size=32)(x, keep)
    assert scores.shape[0] == 2 and scores.ndim == 2
    assert torch.isfinite(scores).all()
    scores.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_discriminator_keeps_fewer_layers_on_small_images():
    assert [discriminator_layers(s) for s in (16, 32, 256)] == [3, 4, 6]


def test_hinge_losses_equal_hand_computed_values():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, 0.5, 2] -> mean 5/6; relu(1 + fake) = [0, 1, 2] -> mean 1
    assert d_hinge_loss(real, fake).item() == pytest.approx(0.5 * 5 / 6 + 0.5 * 1)
    assert g_hinge_loss(fake).item() == pytest.approx(1 / 3)


@pytest.mark.parametrize("kind", sorted(PURIFIERS))
def test_purifier_overfits_a_tiny_batch(kind):
    torch.manual_seed(0)
    x, keep = _batch(n=4, size=16)
    net = build_purifier(kind, width=WIDTH, image_size=16)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def loss() -> torch.Tensor:
        return sum((o - x).abs().mean() for o in net.stages(x * keep, keep))

    first = loss().item()
    for _ in range(30):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    assert loss().item() <= 0.7 * first


def test_unknown_kind_lists_known_kinds():
    with pytest.raises(ValueError, match=r"'vae'.*known: ae, gan"):
        build_purifier("vae", width=WIDTH, image_size=32)


@pytest.mark.parametrize(
    ("image_size", "work_size", "named"), [(30, 0, "image_size 30"), (32, 66, "work_size 66")]
)
def test_size_not_divisible_by_four_is_refused_with_its_value(image_size, work_size, named):
    with pytest.raises(ValueError, match=named):
        build_purifier("ae", width=WIDTH, image_size=image_size, work_size=work_size)


def test_input_not_divisible_by_four_is_refused_at_run_time():
    net = build_purifier("ae", width=WIDTH, image_size=32)
    with pytest.raises(ValueError, match="image height 30"):
        net(torch.zeros(1, 3, 30, 30), torch.ones(1, 1, 30, 30))
