"""The defended model: frozen classifier, batched EOT, voting, save/load round trip."""

import pytest
import torch
from torch import nn

from atop_core.config import ClassifierConfig, PurifierConfig, TransformConfig
from atop_core.defense import DefendedModel, load_defense, save_defense, save_transform_variant
from atop_core.nets.classifiers import build_classifier
from atop_core.nets.purifiers import build_purifier
from atop_core.transforms import RandomTransform

SIZE = 32


def _defense(eot=1, mode="eot", kind="rt2", purifier_kind="ae", seed=0):
    torch.manual_seed(0)
    classifier = build_classifier("small", 10, SIZE, width=0.25)
    purifier = build_purifier(purifier_kind, width=4, image_size=SIZE)
    transform = RandomTransform(TransformConfig(kind=kind), seed=seed)
    return DefendedModel(classifier, purifier, transform, eot=eot, mode=mode)


def _save(model, path, purifier_kind):
    return save_defense(
        path,
        model.classifier,
        model.purifier,
        dataset="cifar10",
        num_classes=10,
        image_size=SIZE,
        classifier_cfg=ClassifierConfig(width=0.25),
        purifier_cfg=PurifierConfig(kind=purifier_kind, width=4),
        transform_cfg=TransformConfig(kind="rt2"),
        atop=True,
    )


def _x(b=3):
    return torch.rand(b, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def test_logits_have_one_row_per_image_for_any_eot():
    for eot in (1, 4):
        assert _defense(eot=eot)(_x()).shape == (3, 10)


def test_eot_averages_the_logits_of_independent_draws():
    one, four = _defense(eot=1, seed=5), _defense(eot=4, seed=5)
    x = _x()
    draws = torch.stack([one(x) for _ in range(4)])  # four sequential single draws
    assert torch.allclose(four(x), draws.mean(0), atol=1e-5)


def test_vote_mode_returns_vote_fractions_with_a_tie_break():
    votes = _defense(eot=5, mode="vote")(_x())
    assert torch.all(votes.sum(1) > 0.99) and torch.all(votes.sum(1) < 1.0 + 1 / 6 + 1e-5)


def test_gradients_reach_the_input_but_never_the_classifier():
    model = _defense(eot=2)
    x = _x().requires_grad_(True)
    model(x).sum().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.classifier.parameters())
    assert any(p.grad is not None for p in model.purifier.parameters())


def test_train_mode_keeps_the_classifier_in_eval_mode():
    model = _defense().train()
    assert model.purifier.training and not model.classifier.training


def test_rt3_defense_purifies_n_copies_and_combines_them():
    model = _defense(kind="rt3")
    assert model.purify(_x()).shape == (3, 3, SIZE, SIZE)


class _PassThrough(nn.Module):
    """A stand-in purifier that returns its input and records the size it was given."""

    def __init__(self, work_size: int) -> None:
        super().__init__()
        self.work_size, self.sizes = work_size, []

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[-1])
        return x


def _noise_left(work_size: int) -> tuple[float, list[int]]:
    """Std of what RT2's noise (σ = 0.25, nothing masked) leaves on a gray image after the
    pass-through purifier, and the sizes the purifier saw."""
    purifier = _PassThrough(work_size)
    transform = RandomTransform(TransformConfig(kind="rt2", missing_rate=0.0), seed=0)
    model = DefendedModel(build_classifier("small", 10, SIZE, width=0.25), purifier, transform)
    gray = torch.full((4, 3, SIZE, SIZE), 0.5)
    out = model.purify(gray)
    assert out.shape == gray.shape
    return (out - gray).std().item(), purifier.sizes


def test_with_a_work_size_the_transform_runs_up_sampled_as_in_the_authors_code():
    """Noise drawn per working pixel averages out when the result shrinks back to native size
    (the authors' 256-px setting); drawn per native pixel it would not."""
    native, sizes = _noise_left(0)
    assert sizes == [SIZE] and 0.22 < native < 0.26  # σ, less a little clipping at 0 and 1
    double, sizes = _noise_left(2 * SIZE)
    assert sizes == [2 * SIZE] and double < 0.5 * native
    quadruple, sizes = _noise_left(4 * SIZE)
    assert sizes == [4 * SIZE] and quadruple < 0.7 * double


@pytest.mark.parametrize("purifier_kind", ["ae", "gan"])
def test_checkpoint_round_trip_gives_identical_outputs_under_the_same_seed(tmp_path, purifier_kind):
    model = _defense(purifier_kind=purifier_kind, seed=7)
    meta = _save(model, tmp_path / "d.pt", purifier_kind)
    loaded = load_defense(tmp_path / "d.pt", "cpu", seed=7)
    model.eval()
    assert torch.equal(model(_x()), loaded(_x()))
    assert not loaded.training and loaded.meta["atop"] is True
    assert (tmp_path / "d.json").exists() and len(meta["sha256"]) == 64


def test_a_flip_averaged_classifier_round_trips_and_must_match_its_config(tmp_path):
    model = _defense(seed=7)
    model.classifier.flip_average = True
    with pytest.raises(ValueError, match="flip_average"):
        _save(model, tmp_path / "d.pt", "ae")  # its config says a single view
    save_defense(
        tmp_path / "d.pt",
        model.classifier,
        model.purifier,
        dataset="cifar10",
        num_classes=10,
        image_size=SIZE,
        classifier_cfg=ClassifierConfig(width=0.25, flip_average=True),
        purifier_cfg=PurifierConfig(kind="ae", width=4),
        transform_cfg=TransformConfig(kind="rt2"),
        atop=True,
    )
    loaded = load_defense(tmp_path / "d.pt", "cpu", seed=7)
    model.eval()
    assert loaded.classifier.flip_average
    assert torch.equal(model(_x()), loaded(_x()))


def test_a_transform_variant_keeps_the_weights_and_is_reused_while_its_source_is_unchanged(
    tmp_path,
):
    model = _defense(purifier_kind="ae", seed=7)
    _save(model, tmp_path / "d.pt", "ae")
    path = save_transform_variant(tmp_path / "d.pt", "-fixed-mask", fixed_mask=True)
    assert path.name == "d-fixed-mask.pt"
    variant, source = load_defense(path, "cpu"), load_defense(tmp_path / "d.pt", "cpu")
    assert variant.transform.cfg.fixed_mask and not source.transform.cfg.fixed_mask
    for a, b in zip(variant.state_dict().values(), source.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    stamp = path.stat().st_mtime_ns
    assert save_transform_variant(tmp_path / "d.pt", "-fixed-mask", fixed_mask=True) == path
    assert path.stat().st_mtime_ns == stamp  # reused, not rewritten
    _save(_defense(purifier_kind="ae", seed=8), tmp_path / "d.pt", "ae")  # the source changes
    save_transform_variant(tmp_path / "d.pt", "-fixed-mask", fixed_mask=True)
    rewritten, changed = load_defense(path, "cpu"), load_defense(tmp_path / "d.pt", "cpu")
    assert all(
        torch.equal(a, b)
        for a, b in zip(rewritten.state_dict().values(), changed.state_dict().values(), strict=True)
    )
    with pytest.raises(ValueError, match="missing_rate"):
        save_transform_variant(tmp_path / "d.pt", "-bad", missing_rate=1.5)


def test_changed_checkpoint_is_refused(tmp_path):
    _save(_defense(), tmp_path / "d.pt", "ae")
    with open(tmp_path / "d.pt", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        load_defense(tmp_path / "d.pt")


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no defense checkpoint at .*nothing.pt"):
        load_defense(tmp_path / "nothing.pt")


@pytest.mark.parametrize(
    "kwargs, message",
    [({"eot": 0}, "eot must be >= 1"), ({"mode": "mean"}, "unknown defense mode 'mean'")],
)
def test_bad_defense_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _defense(**kwargs)


def test_a_frozen_defense_draws_the_same_noise_and_masks_every_call():
    torch.manual_seed(0)
    model = DefendedModel(
        build_classifier("small", 10, 32, width=0.25),
        build_purifier("ae", width=4, image_size=32),
        RandomTransform(TransformConfig(), seed=3),
    ).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        fresh = model.draw_logits(x, 2)
        model.frozen = True
        frozen = model.draw_logits(x, 2), model.draw_logits(x, 1)
    assert not torch.allclose(fresh[0], fresh[1])  # two fresh draws differ
    assert torch.equal(frozen[0][0], frozen[0][1]) and torch.equal(frozen[0][0], frozen[1][0])
