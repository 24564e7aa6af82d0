"""Exactness of the random transforms: fractions, grid alignment, partitions, seeds."""

import pytest
import torch

from atop_core.config import TransformConfig, as_dict, config_hash
from atop_core.transforms import RandomTransform, block_mask, partition_masks


def _images(b=6, size=32, value=0.5):
    return torch.full((b, 3, size, size), value)


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5, 0.75])
def test_masked_fraction_is_exactly_the_missing_rate_for_every_sample(rate):
    keep = block_mask(20, 32, 8, rate, torch.Generator().manual_seed(0))
    assert keep.shape == (20, 1, 32, 32)
    assert torch.equal(1 - keep.mean(dim=(1, 2, 3)), torch.full((20,), rate))


def test_masks_differ_between_samples_by_default():
    keep = block_mask(8, 32, 8, 0.25, torch.Generator().manual_seed(0))
    assert len({tuple(k.flatten().tolist()) for k in keep}) == 8


@pytest.mark.parametrize("size, grid", [(32, 8), (128, 8), (32, 4)])
def test_blocks_are_aligned_to_the_grid(size, grid):
    keep = block_mask(4, size, grid, 0.25, torch.Generator().manual_seed(1))
    step = size // grid
    blocks = keep.unfold(2, step, step).unfold(3, step, step)  # (n, 1, grid, grid, step, step)
    assert torch.equal(blocks.amin(dim=(-1, -2)), blocks.amax(dim=(-1, -2)))


def test_partition_masks_cover_every_block_exactly_once():
    keeps = partition_masks(5, 32, 8, 4, torch.Generator().manual_seed(2))
    missing = 1 - keeps
    assert torch.equal(missing.sum(0), torch.ones(5, 1, 32, 32))
    assert torch.equal(missing.mean(dim=(2, 3, 4)), torch.full((4, 5), 0.25))


def test_rt1_masks_without_noise():
    t = RandomTransform(TransformConfig(kind="rt1"))
    out, keep = t(_images())
    assert torch.equal(out, _images() * keep)


def test_rt2_noise_has_the_configured_std_before_clipping():
    t = RandomTransform(TransformConfig(kind="rt2", noise_std=0.1, missing_rate=0.0))
    out, keep = t(_images(b=64))
    assert keep.min() == 1
    noise = out - 0.5  # 0.5 ± 0.1 is almost never clipped
    assert abs(noise.std().item() - 0.1) < 0.005 and abs(noise.mean().item()) < 0.005


def test_rt2_output_is_clipped_to_unit_range_and_zero_where_missing():
    out, keep = RandomTransform(TransformConfig(kind="rt2"))(_images(value=0.95))
    assert out.min() >= 0 and out.max() <= 1
    assert out[keep.expand_as(out) == 0].abs().max() == 0


def test_rt3_makes_n_copies_whose_masks_partition_each_image():
    t = RandomTransform(TransformConfig(kind="rt3", n_masks=4, missing_rate=0.25))
    out, keep = t(_images(b=3))
    assert out.shape == (12, 3, 32, 32) and keep.shape == (12, 1, 32, 32)
    assert torch.equal((1 - keep).view(4, 3, 1, 32, 32).sum(0), torch.ones(3, 1, 32, 32))


def test_rt3_combination_keeps_only_each_copys_filled_blocks():
    t = RandomTransform(TransformConfig(kind="rt3", n_masks=4, missing_rate=0.25))
    _, keep = t(_images(b=2))
    fills = torch.arange(4.0).view(4, 1, 1, 1, 1).expand(4, 2, 3, 32, 32).reshape(8, 3, 32, 32)
    combined = t.combine(fills, keep)
    expected = ((1 - keep).view(4, 2, 1, 32, 32) * torch.arange(4.0).view(4, 1, 1, 1, 1)).sum(0)
    assert combined.shape == (2, 3, 32, 32)
    assert torch.equal(combined, expected.expand(2, 3, 32, 32))


def test_rt3_independent_masks_average_where_covered_and_everywhere_else():
    cfg = TransformConfig(kind="rt3", n_masks=3, missing_rate=0.25, partition=False)
    t = RandomTransform(cfg)
    _, keep = t(_images(b=2))
    fills = torch.arange(3.0).view(3, 1, 1, 1, 1).expand(3, 2, 3, 32, 32).reshape(6, 3, 32, 32)
    combined = t.combine(fills, keep)
    missing = 1 - keep.view(3, 2, 1, 32, 32)
    count, owner = missing.sum(0), (missing * torch.arange(3.0).view(3, 1, 1, 1, 1)).sum(0)
    assert torch.all(combined[(count == 0).expand(2, 3, 32, 32)] == 1.0)  # mean of 0, 1, 2
    once = (count == 1).expand(2, 3, 32, 32)
    assert once.any() and torch.equal(combined[once], owner.expand(2, 3, 32, 32)[once])


def test_same_seed_gives_the_same_draw_and_seed_restarts_the_stream():
    a, b = RandomTransform(TransformConfig(), seed=3), RandomTransform(TransformConfig(), seed=3)
    first = a(_images())[0]
    assert torch.equal(first, b(_images())[0])
    assert not torch.equal(first, a(_images())[0])  # the stream moves on
    a.seed()
    assert torch.equal(first, a(_images())[0])


def test_reseeding_global_rng_leaves_transform_draws_unchanged():
    a, b = RandomTransform(TransformConfig(), seed=0), RandomTransform(TransformConfig(), seed=0)
    torch.manual_seed(1)
    first = a(_images())[0]
    torch.manual_seed(2)
    torch.rand(100)
    assert torch.equal(first, b(_images())[0])


def test_per_batch_draws_share_one_mask_and_noise():
    t = RandomTransform(TransformConfig(per_sample=False))
    out, keep = t(_images(b=4))
    assert all(torch.equal(out[0], o) for o in out) and all(torch.equal(keep[0], k) for k in keep)


@pytest.mark.parametrize("kind", ["rt1", "rt2", "rt3"])
def test_a_fixed_mask_is_the_same_for_every_image_call_and_reseeding(kind):
    t = RandomTransform(TransformConfig(kind=kind, fixed_mask=True), seed=0)
    out, keep = t(_images(b=4))
    t.seed(123)  # evaluations reseed per batch: the mask must not follow
    out2, keep2 = t(_images(b=4))
    copies = keep.view(t.copies, 4, *keep.shape[1:])
    assert all(torch.equal(copies[:, 0], copies[:, i]) for i in range(4))
    assert torch.equal(keep, keep2) and keep.min() == 0
    if kind != "rt1":  # the noise stays random
        assert not torch.equal(out, out2) and not torch.equal(out[0], out[1])
    other = RandomTransform(TransformConfig(kind=kind, fixed_mask=True, mask_seed=1))
    assert not torch.equal(other(_images(b=4))[1], keep)


def test_fields_added_later_are_named_only_when_set():
    """Checkpoint names and defense files use `as_dict`: a default fixed_mask renames nothing."""
    assert "fixed_mask" not in as_dict(TransformConfig())
    assert as_dict(TransformConfig(fixed_mask=True))["fixed_mask"] is True
    assert config_hash(TransformConfig()) != config_hash(TransformConfig(fixed_mask=True))


def test_no_transform_passes_images_through():
    out, keep = RandomTransform(TransformConfig(kind="none"))(_images())
    assert torch.equal(out, _images()) and keep.min() == 1


def test_grid_that_does_not_divide_the_image_is_refused():
    with pytest.raises(ValueError, match="grid 8 does not divide the image size 36"):
        RandomTransform(TransformConfig())(_images(size=36))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "rt4"}, "unknown transform kind 'rt4'; known: none, rt1, rt2, rt3"),
        ({"missing_rate": 1.0}, "missing_rate must be in \\[0, 1\\), got 1.0"),
        ({"missing_rate": -0.1}, "missing_rate must be in \\[0, 1\\), got -0.1"),
        ({"n_masks": 0}, "n_masks \\(N\\) must be >= 1, got 0"),
        ({"grid": 0}, "grid must be >= 1"),
        ({"noise_std": -1.0}, "noise_std must be >= 0"),
        ({"kind": "rt3", "missing_rate": 0.5}, "need missing_rate = 1/n_masks = 0.25, got 0.5"),
    ],
)
def test_bad_transform_config_is_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TransformConfig(**kwargs)
