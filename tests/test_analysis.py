"""What the figures show: the missing-rate × mix-number quantities, the stages of one
transform draw, purified examples, and records as a table."""

import math

import pytest
import torch
from torch import nn

from atop_core.analysis import (
    MIX_COLUMNS,
    attack_strength,
    mix_number_analysis,
    purify_examples,
    readings_frame,
    rt_stages,
)
from atop_core.config import TransformConfig
from atop_core.defense import DefendedModel
from atop_core.nets.classifiers import build_classifier
from atop_core.nets.purifiers import build_purifier
from atop_core.tables import records_frame
from atop_core.transforms import RandomTransform
from tests.test_tables import make_record

SIZE = 32
RT3 = TransformConfig(kind="rt3", noise_std=0.2)


def _images(b=4, seed=0):
    return torch.rand(b, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


class FillGray(nn.Module):
    """A stand-in purifier: keeps what it sees and paints missing pixels mid-gray."""

    def forward(self, copies, keep):
        return copies * keep + 0.5 * (1 - keep)


# --- mix_number_analysis ------------------------------------------------------------------------


def test_mix_analysis_has_one_row_per_pair_with_named_columns():
    x = _images(3)
    frame = mix_number_analysis(x, x, [0.1, 0.5], [1, 2, 3], noise_std=0.1, grid=8)
    assert list(frame.columns) == list(MIX_COLUMNS)
    assert len(frame) == 6
    assert set(zip(frame.missing_rate, frame.mix_number, strict=True)) == {
        (r, m) for r in (0.1, 0.5) for m in (1, 2, 3)
    }
    assert (frame.n == 3).all() and (frame.grid == 8).all() and (frame.noise_std == 0.1).all()


def test_masked_perturbation_is_zero_when_adversarial_equals_clean():
    x = _images()
    frame = mix_number_analysis(x, x.clone(), [0.0, 0.3, 0.9], [1, 4], noise_std=0.25, grid=8)
    assert (frame.masked_perturbation == 0).all()
    assert (frame.noise_residual > 0).all()


def test_noise_residual_is_zero_without_noise():
    x = _images()
    frame = mix_number_analysis(x, _images(seed=1), [0.25], [1, 3], noise_std=0.0, grid=8)
    assert (frame.noise_residual == 0).all()


@pytest.mark.parametrize("grid", [8, SIZE])  # blocks, and per-pixel masks (the authors')
def test_masked_perturbation_of_a_uniform_shift_is_the_kept_fraction(grid):
    x, shift = torch.full((2, 3, SIZE, SIZE), 0.5), 0.01
    rates = [0.0, 0.25, 0.3, 0.6]
    frame = mix_number_analysis(x, x + shift, rates, [1, 3], noise_std=0.1, grid=grid)
    for row in frame.itertuples():
        kept = 1 - round(row.missing_rate * grid * grid) / (grid * grid)
        assert row.masked_perturbation == pytest.approx(100 * shift * kept, rel=1e-5)


def test_masked_perturbation_never_rises_with_the_missing_rate():
    """Rows with one mix number share their draws, so masks at a higher rate lose a superset of
    blocks and the kept perturbation cannot grow, exactly."""
    x = _images()
    adv = (x + 0.03 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))).clamp(0, 1)
    rates = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9]
    frame = mix_number_analysis(x, adv, rates, [1, 2, 5], noise_std=0.1, grid=8)
    for _, group in frame.groupby("mix_number"):
        values = group.sort_values("missing_rate").masked_perturbation.tolist()
        assert all(a >= b for a, b in zip(values, values[1:], strict=False))
        assert values[0] > values[-1]


def test_noise_residual_falls_like_one_over_root_mix_number_without_masks():
    """With nothing masked, the residual is the mean |mean of M Gaussians|: σ·sqrt(2/(πM))."""
    x, std = torch.full((16, 3, SIZE, SIZE), 0.5), 0.05  # 0.5 ± 0.05: never clipped in practice
    frame = mix_number_analysis(x, x, [0.0], [1, 4, 9], noise_std=std, grid=8)
    for row in frame.itertuples():
        expected = 100 * std * math.sqrt(2 / (math.pi * row.mix_number))
        assert row.noise_residual == pytest.approx(expected, rel=0.02)


def test_same_seed_gives_the_same_frame_and_another_seed_another():
    x, adv = _images(), _images(seed=1)
    args = ([0.2, 0.6], [1, 3])
    a = mix_number_analysis(x, adv, *args, noise_std=0.1, grid=8, seed=3)
    b = mix_number_analysis(x, adv, *args, noise_std=0.1, grid=8, seed=3)
    c = mix_number_analysis(x, adv, *args, noise_std=0.1, grid=8, seed=4)
    assert a.equals(b)
    assert not a.noise_residual.equals(c.noise_residual)


def test_mix_analysis_refuses_clean_and_adversarial_of_different_shapes():
    with pytest.raises(ValueError, match="one shape"):
        mix_number_analysis(_images(2), _images(3), [0.1], [1], noise_std=0.1, grid=8)


# --- rt_stages --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg, copies",
    [(TransformConfig(kind="rt1"), 1), (TransformConfig(kind="rt2"), 1), (RT3, 4)],
)
def test_rt_stages_shapes(cfg, copies):
    x = _images(3)
    s = rt_stages(FillGray(), cfg, x, seed=1)
    assert s.kind == cfg.kind
    assert s.input.shape == s.noisy.shape == s.combined.shape == (3, 3, SIZE, SIZE)
    assert s.copies.shape == s.filled.shape == (copies, 3, 3, SIZE, SIZE)
    assert s.keep.shape == (copies, 3, 1, SIZE, SIZE)


@pytest.mark.parametrize("cfg", [TransformConfig(kind="rt2"), RT3])
def test_rt_stages_combined_is_the_transforms_combination_of_the_completions(cfg):
    x, seed = _images(3), 7
    s = rt_stages(FillGray(), cfg, x, seed=seed)
    t = RandomTransform(cfg, seed)
    copies, keep = t(x)
    filled = FillGray()(copies, keep)
    assert torch.equal(s.copies.flatten(0, 1), copies)
    assert torch.equal(s.filled.flatten(0, 1), filled)
    assert torch.equal(s.combined, t.combine(filled, keep))


@pytest.mark.parametrize("cfg", [TransformConfig(kind="rt2"), RT3])
def test_rt_stages_noisy_image_is_the_one_the_masks_were_applied_to(cfg):
    s = rt_stages(FillGray(), cfg, _images(3), seed=2)
    assert torch.equal(s.copies, s.noisy * s.keep)
    assert not torch.equal(s.noisy, s.input)


def test_rt1_stages_have_no_noise():
    s = rt_stages(FillGray(), TransformConfig(kind="rt1"), _images(2), seed=2)
    assert torch.equal(s.noisy, s.input)


def test_rt3_partition_combination_takes_each_pixel_from_the_copy_that_lost_it():
    s = rt_stages(FillGray(), RT3, _images(2), seed=3)
    assert torch.equal((1 - s.keep).sum(0), torch.ones(2, 1, SIZE, SIZE))
    assert torch.allclose(s.combined, torch.full_like(s.combined, 0.5))  # FillGray's paint


def test_rt_stages_run_a_real_purifier():
    purifier = build_purifier("ae", width=4, image_size=SIZE).eval()
    s = rt_stages(purifier, RT3, _images(2), seed=0)
    assert s.filled.shape == (4, 2, 3, SIZE, SIZE)
    assert 0 <= s.combined.min() and s.combined.max() <= 1


# --- purify_examples ----------------------------------------------------------------------------


def _defense(cfg=RT3):
    torch.manual_seed(0)
    classifier = build_classifier("small", 10, SIZE, width=0.25)
    return DefendedModel(classifier, FillGray(), RandomTransform(cfg, seed=0))


def test_purify_examples_pairs_images_with_the_classifiers_predictions():
    defense, x = _defense(), _images(3)
    x_adv = (x + 0.03).clamp(0, 1)
    images, preds = purify_examples(defense, x, x_adv, seed=5)
    assert list(images) == ["clean", "adversarial", "purified clean", "purified adversarial"]
    assert torch.equal(images["purified clean"], rt_stages(FillGray(), RT3, x, 5).combined)
    for kind, image in images.items():
        assert image.shape == x.shape
        assert torch.equal(preds[kind], defense.classifier(image).argmax(1))


def test_purify_examples_leaves_the_defenses_own_random_stream_alone():
    defense, x = _defense(), _images(2)
    purify_examples(defense, x, x, seed=9)
    assert torch.equal(defense.transform(x)[1], RandomTransform(RT3, seed=0)(x)[1])


# --- readings_frame ------------------------------------------------------------------------------


def _record(attack, accuracy=0.5, name=None, unreliable=None):
    defense = {"file": "defense-gan-rt2-atop.pt"} | ({"name": name} if name else {})
    return {
        "dataset": "cifar10",
        "profile": "smoke",
        "protocol": "whole-model",
        "defense": defense,
        "attack": {"eps": 8 / 255, "steps": 10, "eot": 4, **attack},
        "draws": 5,
        "n": 100,
        "accuracy": {k: accuracy for k in ("single", "vote", "worst")},
        "interval": {k: [accuracy - 0.1, accuracy + 0.1] for k in ("single", "vote", "worst")},
        "unreliable": unreliable,
    }


def test_readings_frame_has_a_row_per_record_and_reading():
    frame = readings_frame([_record({"name": "pgd-eot"}), _record({"name": "fgsm"}, name="x")])
    assert len(frame) == 6
    assert sorted(frame.reading.unique()) == ["single", "vote", "worst"]
    assert set(frame.defense) == {"defense-gan-rt2-atop", "x"}  # the file stem when unnamed
    row = frame.iloc[0]
    assert row.eps_255 == 8.0 and row.steps == 10 and row.eot == 4
    assert (row.accuracy, row.lo, row.hi) == (0.5, 0.4, 0.6)


def test_clean_accuracy_sits_at_zero_eps_and_zero_steps():
    frame = readings_frame([_record({"name": "clean"}, accuracy=0.9)])
    assert (frame.eps == 0).all() and (frame.eps_255 == 0).all() and (frame.steps == 0).all()
    assert frame.eot.isna().all()


def test_readings_frame_marks_only_records_that_failed_a_check():
    frame = readings_frame(
        [_record({"name": "pgd"}, unreliable=True), _record({"name": "fgsm"}, unreliable=None)]
    )
    assert frame.groupby("attack").unreliable.all().to_dict() == {"fgsm": False, "pgd": True}


# --- attack_strength -----------------------------------------------------------------------------


def _strength_records(full: float, bpda: float, classifier_only: float, **kw) -> list[dict]:
    """The three attacks of the comparison on one defense, at the quick profile's budget."""
    return [
        make_record(attack="pgd-eot", single=full, **kw),
        make_record(attack="bpda-eot", single=bpda, **kw),
        make_record(attack="pgd", single=classifier_only, protocol="classifier-only", eot=1, **kw),
    ]


@pytest.mark.parametrize(
    "full, verdict", [(0.2, "yes"), (0.33, "within the intervals"), (0.5, "no")]
)
def test_attack_strength_says_whether_the_full_gradient_attack_is_strongest(full, verdict):
    frame = records_frame(_strength_records(full, bpda=0.3, classifier_only=0.6))
    table = attack_strength(frame)
    assert len(table) == 1 and table.loc[0, "full gradient strongest"] == verdict
    assert table.loc[0, "BPDA+EOT"] == "30.0 [25.0, 35.0]"


def test_attack_strength_skips_defenses_without_all_three_at_the_profiles_budget():
    records = _strength_records(0.2, 0.3, 0.6)
    other_steps = [make_record(attack="pgd-eot", defense="defense-gan-rt2-plain", steps=20)]
    other_steps += _strength_records(0.2, 0.3, 0.6, defense="defense-gan-rt2-plain")[1:]
    assert len(attack_strength(records_frame(records[:2] + other_steps))) == 0
