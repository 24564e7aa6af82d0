"""The explorer: its computation on a tiny defense, and its widgets driven as a user would."""

import pytest
import torch

from atop_core.config import TransformConfig
from atop_core.defense import load_defense, save_transform_variant
from atop_core.explorer import (
    ATTACK_CHOICES,
    VOTE_DRAWS,
    Explorer,
    attack_image,
    default_defense,
    explore,
    find_defenses,
)
from tests.conftest import save_tiny_defense, write_tree

CLASSES = [f"c{i}" for i in range(10)]


def _image(seed=0):
    return torch.rand((3, 32, 32), generator=torch.Generator().manual_seed(seed))


def _defense(tmp_path):
    return load_defense(save_tiny_defense(tmp_path / "d.pt"), "cpu")


def test_defenses_are_found_quick_profile_first_with_the_papers_defense_as_default(tmp_path):
    home = tmp_path / "home" / "checkpoints"
    for profile, name in [
        ("smoke", "ae-rt2-atop"),
        ("quick", "ae-rt1-plain"),
        ("quick", "gan-rt2-atop"),
    ]:
        folder = home / profile / "cifar10"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"defense-{name}.pt").touch()
    labels = list(find_defenses("cifar10"))
    assert labels == ["quick: ae-rt1-plain", "quick: gan-rt2-atop", "smoke: ae-rt2-atop"]
    assert default_defense(labels) == "quick: gan-rt2-atop"
    assert find_defenses("imagenette") == {}


def test_a_view_is_one_seeded_draw_and_a_new_seed_draws_anew(tmp_path):
    defense, x = _defense(tmp_path), _image()
    a = explore(defense, TransformConfig(kind="rt2"), x, CLASSES, seed=3)
    b = explore(defense, TransformConfig(kind="rt2"), x, CLASSES, seed=3)
    c = explore(defense, TransformConfig(kind="rt2"), x, CLASSES, seed=4)
    assert torch.equal(a.stages.combined, b.stages.combined)
    assert not torch.equal(a.stages.keep, c.stages.keep)
    assert a.stages.copies.shape == (1, 1, 3, 32, 32)
    assert len(a.predictions) == 3  # the image, this draw, the votes


def test_rt3_shows_its_n_copies_and_the_adversarial_row_shares_the_clean_rows_draw(tmp_path):
    defense = _defense(tmp_path)
    cfg = TransformConfig(kind="rt3", n_masks=4, missing_rate=0.25)
    view = explore(defense, cfg, _image(0), CLASSES, seed=1, x_adv=_image(1))
    assert view.stages.copies.shape == (4, 2, 3, 32, 32)
    assert torch.equal(view.stages.keep[:, 0], view.stages.keep[:, 1])  # same masks, both rows
    assert (view.stages.keep.sum(0) == 3).all()  # the 4 masks partition the blocks
    assert len(view.predictions) == 6


def test_votes_are_shares_of_the_draws(tmp_path):
    view = explore(_defense(tmp_path), TransformConfig(), _image(), CLASSES, seed=0)
    shares = view.predictions.iloc[2, 1].split(", ")
    percents = [int(s.rsplit(" ", 1)[1].rstrip("%")) for s in shares]
    assert sum(percents) <= 100 and all(p % round(100 / VOTE_DRAWS) < 7 for p in percents)


@pytest.mark.parametrize("choice", list(ATTACK_CHOICES))
def test_attacking_one_image_stays_in_its_budget_and_ticks_each_pass(tmp_path, choice):
    defense, x, ticks = _defense(tmp_path), _image(), []
    adv = attack_image(
        defense, choice, x, 3, 4 / 255, 3, 2, seed=0, on_step=lambda: ticks.append(1)
    )
    assert adv.shape == x.shape and 0 <= adv.min() and adv.max() <= 1
    assert (adv - x).abs().max() <= 4 / 255 + 1e-6
    assert len(ticks) >= 3  # one classifier pass per step at least


def _explorer(tmp_path, monkeypatch):
    data = write_tree(tmp_path / "data", "cifar10", per_class=2).parent
    monkeypatch.setenv("ATOP_DATA_DIR", str(data))
    folder = tmp_path / "home" / "checkpoints" / "smoke" / "cifar10"
    folder.mkdir(parents=True)
    save_tiny_defense(folder / "defense-ae-rt2-atop.pt")
    return Explorer("cifar10", torch.device("cpu"))


def test_moving_a_control_redraws_the_picture(tmp_path, monkeypatch):
    ex = _explorer(tmp_path, monkeypatch)
    first = ex.picture.value
    assert bytes(first).startswith(b"\x89PNG") and "True class" in ex.table.value
    ex.noise.value = 0.4
    assert ex.picture.value != first and ex.message.value == ""
    ex.redraw.click()
    assert ex.seed.value == 1


def test_bad_values_show_the_librarys_message_instead_of_a_picture(tmp_path, monkeypatch):
    ex = _explorer(tmp_path, monkeypatch)
    ex.grid.value = 7
    assert "grid 7 does not divide the image size 32" in ex.message.value
    ex.grid.value = 8
    assert ex.message.value == ""
    ex.partition.value = False
    ex.kind.value = "RT1"
    ex.rate.value = 1.0
    assert "missing_rate must be in [0, 1)" in ex.message.value


def test_rt3_with_a_partition_ties_the_missing_rate_to_n(tmp_path, monkeypatch):
    ex = _explorer(tmp_path, monkeypatch)
    ex.kind.value = "RT3"
    assert ex.rate.disabled and ex.transform_config().missing_rate == 1 / ex.masks.value
    ex.masks.value = 2
    assert ex.transform_config().missing_rate == 0.5 and ex.message.value == ""


def test_choosing_an_rt3_defense_sets_its_controls_and_ties_the_rate(tmp_path, monkeypatch):
    ex = _explorer(tmp_path, monkeypatch)
    folder = tmp_path / "home" / "checkpoints" / "smoke" / "cifar10"
    save_transform_variant(folder / "defense-ae-rt2-atop.pt", "-rt3", kind="rt3")
    ex = Explorer("cifar10", torch.device("cpu"))
    ex.defense_choice.value = "smoke: ae-rt2-atop-rt3"
    assert ex.kind.value == "RT3" and ex.rate.disabled and ex.message.value == ""
    assert ex.view.stages.copies.shape[0] == 4


def test_the_attack_button_adds_the_adversarial_row(tmp_path, monkeypatch):
    ex = _explorer(tmp_path, monkeypatch)
    ex.steps.value, ex.eot.value = 2, 2
    ex.run_attack.click()
    assert ex.x_adv is not None and len(ex.view.predictions) == 6
    ex.image.value = 1  # another image: the attack was on the previous one
    assert ex.x_adv is None and len(ex.view.predictions) == 3


def test_without_a_defense_the_explorer_says_so_and_offers_training(tmp_path, monkeypatch):
    ex = Explorer("cifar10", torch.device("cpu"))
    assert "No trained defense for cifar10" in ex.message.value
    assert ex.train.layout.display is None  # shown
    assert "No trained defense" in ex.snapshot().data
