"""The attack registry: every entry runs, stays in its budget, is seeded, and EOT/BPDA are exact."""

import dataclasses
import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atop_core.attacks import ATTACKS, AttackConfig, bpda_loss, eot_loss, library, run_attack
from atop_core.attacks.cw import margin
from atop_core.attacks.stadv import apply_flow, flow_smoothness, stadv_ascent, stadv_flow
from atop_core.config import TransformConfig
from atop_core.data import load_dataset
from atop_core.defense import DefendedModel, load_defense
from atop_core.nets.classifiers import build_classifier
from atop_core.nets.purifiers import build_purifier
from atop_core.transforms import RandomTransform

SIZE = 16  # tiny images: every attack in well under a second
TINY = {"steps": 2, "eot": 2, "queries": 20, "search_steps": 2}  # ignored where not read
BOUNDED = [n for n in sorted(ATTACKS) if ATTACKS[n].norm in ("linf", "l2")]
CHECKPOINT = (
    Path(__file__).resolve().parents[1] / "checkpoints/quick/cifar10/defense-none-none-plain.pt"
)
DATA_DIR = os.environ.get("ATOP_DATA_DIR")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny nets run faster on one thread: on a busy machine, thread hand-offs cost 30× the
    convolutions themselves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _classifier(seed=0):
    """A linear classifier with large weights: untrained conv nets barely depend on their input,
    and an attack on a constant function cannot show that it moves."""
    torch.manual_seed(seed)
    linear = nn.Linear(3 * SIZE * SIZE, 10)
    nn.init.normal_(linear.weight, std=0.1)
    return nn.Sequential(nn.Flatten(), linear).eval()


def _defense(seed=0, purifier=True):
    clf = _classifier()
    g = build_purifier("ae", width=4, image_size=SIZE) if purifier else None
    return DefendedModel(clf, g, RandomTransform(TransformConfig(), seed=seed)).eval()


def _batch(n=4):
    """Images and the classifier's own predictions as labels, so every attack has work to do
    (asking the classifier, not a defense, leaves the defense's draws alone)."""
    x = torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return x, _classifier()(x).argmax(-1)


class ScriptedTransform(nn.Module):
    """Masks-only stand-in for RandomTransform with fixed draws: a (K·B)-row batch gets all K
    masks at once, a B-row batch the next one in turn, so batched and looped passes match."""

    copies = 1

    def __init__(self, masks):
        super().__init__()
        self.masks, self.calls = masks, 0  # (K, B, 1, H, W)

    def forward(self, x):
        if len(x) == self.masks.shape[0] * self.masks.shape[1]:
            keep = self.masks.flatten(0, 1)
        else:
            keep, self.calls = self.masks[self.calls], self.calls + 1
        return x * keep, keep

    def combine(self, filled, keep):
        return filled


def _scripted_defense(draws, n):
    masks = torch.rand(draws, n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) > 0.3
    purifier = build_purifier("ae", width=4, image_size=SIZE)
    return DefendedModel(_classifier(), purifier, ScriptedTransform(masks.float())).eval()


# --- every entry of the registry ---------------------------------------------------------------


@pytest.mark.parametrize("target", ["classifier", "defense"])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_runs_end_to_end(name, target):
    model = _classifier() if target == "classifier" else _defense()
    x, y = _batch()
    rng_before = torch.get_rng_state()
    adv = run_attack(model, AttackConfig(name=name, **TINY), x, y)
    assert adv.shape == x.shape and adv.dtype == x.dtype and not adv.requires_grad
    assert adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's stream is untouched
    assert all(p.grad is None for p in model.parameters())  # no gradients left on the model
    if target == "defense":
        assert (model.eot, model.mode) == (1, "eot")  # restored after the attack


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_same_seed_gives_the_same_adversarial_examples(name):
    model = _classifier()
    x, y = _batch()
    cfg = AttackConfig(name=name, **TINY, seed=7)
    assert torch.equal(run_attack(model, cfg, x, y), run_attack(model, cfg, x, y))


@pytest.mark.parametrize("target", ["classifier", "defense"])
@pytest.mark.parametrize("name", BOUNDED)
def test_bounded_attacks_stay_inside_their_eps_ball(name, target):
    model = _classifier() if target == "classifier" else _defense(purifier=False)
    x, y = _batch(n=6)
    linf = ATTACKS[name].norm == "linf"
    eps = 8 / 255 if linf else 0.5
    adv = run_attack(model, AttackConfig(name=name, eps=eps, steps=5, eot=2, queries=50), x, y)
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if linf else delta.norm(dim=1)
    assert size.max() <= eps + 1e-6
    if target == "classifier":  # the labels are its predictions: every attack has to move
        assert size.max() > eps / 2


def test_cw_with_eps_is_projected_onto_the_l2_ball():
    model = _classifier()
    x, y = _batch()
    adv = run_attack(model, AttackConfig(name="cw-l2", eps=0.05, steps=20, search_steps=3), x, y)
    size = (adv - x).flatten(1).norm(dim=1)
    assert torch.allclose(size, torch.full_like(size, 0.05), atol=1e-6)  # all need more than 0.05


def test_unbounded_cw_is_not_held_to_a_ball():
    model = _classifier()
    x, y = _batch()
    cfg = AttackConfig(name="cw-l2", steps=30, search_steps=2, const=10.0)
    assert cfg.eps == math.inf and "eps" not in cfg.tag()
    adv = run_attack(model, cfg, x, y)
    assert (model(adv).argmax(-1) != y).all()


# --- our own attacks: C&W, StAdv, EOT, BPDA ----------------------------------------------------


def test_cw_finds_the_minimal_l2_distance_of_a_linear_classifier():
    """For logits W·x + b the closest misclassified point lies at |z_0 − z_1| / ||w_0 − w_1||
    (inside the [0,1] box here): C&W's binary search must land just beyond it, starting from a
    constant 1000× too small."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 2)).eval()
    x = 0.5 + 0.01 * torch.randn(4, 3, SIZE, SIZE)
    with torch.no_grad():
        y = model(x).argmax(-1)
        z = model(x)
    w = model[1].weight
    minimal = (z[:, 0] - z[:, 1]).abs() / (w[0] - w[1]).norm()
    cfg = AttackConfig(name="cw-l2", steps=200, search_steps=9, const=1e-4, lr=0.005)
    adv = run_attack(model, cfg, x, y)
    found = (adv - x).flatten(1).norm(dim=1)
    assert (model(adv).argmax(-1) != y).all()
    assert (found >= minimal * (1 - 1e-3)).all() and (found <= minimal * 1.1).all()


def test_stadv_flow_stays_within_its_bound_and_reaches_it():
    model = _classifier()
    x, y = _batch()
    cfg = AttackConfig(name="stadv", steps=20)
    flow = stadv_flow(model, x, y, cfg)
    assert flow.shape == (4, SIZE, SIZE, 2)
    assert flow.abs().max() <= 0.05 and flow.abs().max() == pytest.approx(0.05)
    assert torch.equal(run_attack(model, cfg, x, y), apply_flow(x, flow))


def test_stadv_on_a_plain_classifier_ascends_the_margin_of_its_one_draw():
    """The EOT route (the moved image's gradient from eot_grad, then the chain rule to the
    flow) gives the flow that differentiating the margin through the flow directly gives."""
    model = _classifier()
    x, y = _batch()
    cfg = AttackConfig(name="stadv", steps=5, eot=3)  # a plain classifier has one draw
    flow = torch.zeros(4, SIZE, SIZE, 2, requires_grad=True)
    opt = torch.optim.Adam([flow], lr=cfg.lr)
    for _ in range(cfg.steps):
        loss = (margin(model(apply_flow(x, flow)), y) + cfg.tau * flow_smoothness(flow)).sum()
        (flow.grad,) = torch.autograd.grad(loss, flow)
        opt.step()
        with torch.no_grad():
            flow.clamp_(-cfg.eps, cfg.eps)
    assert torch.allclose(stadv_ascent(model, x, y, cfg), flow.detach(), atol=1e-6)


def test_flow_is_in_normalised_coordinates_two_over_width_per_pixel():
    x = torch.rand(2, 3, SIZE, SIZE)
    assert torch.allclose(apply_flow(x, torch.zeros(2, SIZE, SIZE, 2)), x, atol=1e-6)
    one_pixel_right = torch.zeros(2, SIZE, SIZE, 2)
    one_pixel_right[..., 0] = 2 / SIZE  # sample from the neighbour on the right
    assert torch.allclose(apply_flow(x, one_pixel_right)[..., :-1], x[..., 1:], atol=1e-6)


def test_flow_smoothness_counts_each_neighbour_pair_from_both_sides():
    flow = torch.zeros(1, SIZE, SIZE, 2)
    assert flow_smoothness(flow).item() == pytest.approx(0.0, abs=1e-2)
    flow[0, 5, 5] = torch.tensor([0.03, 0.04])  # a spike of norm 0.05 at an inner pixel
    assert flow_smoothness(flow).item() == pytest.approx(8 * 0.05, abs=1e-2)


def test_eot_gradient_equals_the_mean_of_per_draw_gradients():
    draws, n = 3, 2
    model = _scripted_defense(draws, n)
    x, y = _batch(n)
    x.requires_grad_(True)
    (batched,) = torch.autograd.grad(eot_loss(model, x, y, draws), x)
    per_draw = [torch.autograd.grad(eot_loss(model, x, y, 1), x)[0] for _ in range(draws)]
    assert model.transform.calls == draws  # one scripted draw per single pass
    assert torch.allclose(batched, torch.stack(per_draw).mean(0), atol=1e-6)


def test_bpda_is_exact_forward_and_identity_backward_through_the_purification():
    draws, n = 3, 2
    model = _scripted_defense(draws, n)
    x, y = _batch(n)
    x.requires_grad_(True)
    loss = bpda_loss(model, x, y, draws)
    (grad,) = torch.autograd.grad(loss, x)
    assert loss.item() == pytest.approx(eot_loss(model, x, y, draws).item(), rel=1e-6)
    purified = model.purify(x.detach().repeat(draws, 1, 1, 1)).requires_grad_(True)
    ce = F.cross_entropy(model.classifier(purified), y.repeat(draws), reduction="sum") / draws
    (at_purified,) = torch.autograd.grad(ce, purified)
    assert torch.allclose(grad, at_purified.view(draws, *x.shape).sum(0), atol=1e-6)


def test_bpda_on_a_plain_classifier_is_pgd_eot():
    model = _classifier()
    x, y = _batch()
    bpda = run_attack(model, AttackConfig(name="bpda-eot", steps=3), x, y)
    assert torch.equal(bpda, run_attack(model, AttackConfig(name="pgd-eot", steps=3), x, y))


@pytest.mark.parametrize(
    "name, per_forward",
    [("pgd", "averaged"), ("fgsm", "averaged"), ("square", "averaged"), ("cw-l2", "averaged")]
    + [("pgd-eot", "averaged"), ("pgd-eot-l2", "averaged"), ("stadv", "averaged")]
    + [("eot-pgd", "looped"), ("apgd", "looped"), ("autoattack-rand", "looped")],
)
def test_attacks_average_draws_in_the_forward_or_loop_over_them(name, per_forward):
    model = _defense(purifier=False)
    x, y = _batch()
    rows = []
    model.transform.register_forward_hook(lambda m, args, out: rows.append(len(args[0])))
    run_attack(model, AttackConfig(name=name, steps=2, eot=3, queries=5, search_steps=1), x, y)
    if per_forward == "averaged":  # Square queries only the samples still standing
        assert max(rows) == 3 * len(x) and all(r % 3 == 0 for r in rows)
    else:  # one draw per forward, 3 forwards per step (AutoAttack's DLR run: what CE left)
        assert max(rows) == len(x) and len(rows) >= 3 * 2


def test_reseeding_the_global_generator_inside_an_attack_leaves_defense_draws_unchanged():
    a, b = _defense(seed=1), _defense(seed=1)
    x, y = _batch()
    run_attack(a, AttackConfig(name="pgd", steps=1, seed=5), x, y)  # torchattacks reseeds
    run_attack(b, AttackConfig(name="pgd", steps=1, seed=6), x, y)
    assert torch.equal(a.purify(x), b.purify(x))


def test_autoattack_targets_nine_classes_on_cifar100(monkeypatch):
    seen = {}

    def fake_multi_attack(parts):
        seen["parts"] = parts
        return lambda x, y: x

    monkeypatch.setattr(library.torchattacks, "MultiAttack", fake_multi_attack)
    model = build_classifier("small", 100, SIZE, width=0.25).eval()
    x = torch.rand(2, 3, SIZE, SIZE)
    run_attack(model, AttackConfig(name="autoattack", num_classes=100), x, torch.tensor([0, 1]))
    apgd, apgdt, fab, square = seen["parts"]
    assert apgdt.n_target_classes == fab.n_target_classes == 9
    assert apgd.steps == apgdt.steps == fab.steps == 100 and square.n_queries == 5000
    assert {p.seed for p in seen["parts"]} == {0}


def test_autoattack_refuses_a_wrong_number_of_classes():
    model = _classifier()
    x, y = _batch(2)
    with pytest.raises(ValueError, match="num_classes is 100 but the model outputs 10 logits"):
        run_attack(model, AttackConfig(name="autoattack", num_classes=100), x, y)


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, norm, eps",
    [("pgd", "linf", 8 / 255), ("pgd-l2", "l2", 0.5), ("stadv", "flow", 0.05)],
)
def test_eps_defaults_follow_the_threat_model(name, norm, eps):
    cfg = AttackConfig(name=name)
    assert cfg.norm == norm and cfg.eps == eps and cfg.describe()["norm"] == norm


def test_defaults_resolve_to_numbers_and_unread_parameters_drop_out():
    assert AttackConfig(name="pgd").alpha == 2 / 255  # eps / 4
    assert AttackConfig(name="pgd", eps=0.1).alpha == 0.025
    assert AttackConfig(name="autoattack-rand").eot == 20
    fgsm = AttackConfig(name="fgsm", steps=20, alpha=0.1, kappa=1.0).describe()
    assert fgsm == {"name": "fgsm", "norm": "linf", "eps": 8 / 255, "eot": 1, "seed": 0}
    for name in ATTACKS:
        described = AttackConfig(name=name).describe()
        assert None not in described.values()
        json.dumps(described, allow_nan=False)  # strict JSON: C&W's unbounded eps is left out
    assert "eps" not in AttackConfig(name="cw-l2").describe()
    moved = dataclasses.replace(AttackConfig(name="pgd"), eps=0.5, alpha=None)
    assert moved.alpha == 0.125  # a new eps with alpha=None takes the new default step


@pytest.mark.parametrize(
    "cfg, tag",
    [
        (AttackConfig(name="clean", eps=0.1, steps=5, eot=4), "clean"),
        (AttackConfig(name="fgsm"), "fgsm"),
        (AttackConfig(name="pgd"), "pgd-10"),
        (AttackConfig(name="pgd-eot", eot=4), "pgd-eot-10-eot4"),
        (AttackConfig(name="pgd-eot", steps=20, eot=4, eps=16 / 255), "pgd-eot-20-eot4-eps0.0627"),
        (AttackConfig(name="cw-l2"), "cw-l2-100"),
        (AttackConfig(name="autoattack"), "autoattack"),
        (AttackConfig(name="autoattack", steps=10), "autoattack-10"),
        (AttackConfig(name="autoattack-rand"), "autoattack-rand-eot20"),
        (AttackConfig(name="square", queries=1000), "square-q1000"),
        (AttackConfig(name="pgd", alpha=0.01), "pgd-10-alpha0.01"),
    ],
)
def test_tags_name_the_configuration(cfg, tag):
    assert cfg.tag() == tag


def test_tags_are_unique_across_names_and_budgets():
    cfgs = [AttackConfig(name=n) for n in ATTACKS] + [AttackConfig(name=n, **TINY) for n in ATTACKS]
    distinct = {tuple(sorted(c.describe().items())) for c in cfgs}
    assert len({c.tag() for c in cfgs}) == len(distinct)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "deepfool"}, "unknown attack 'deepfool'; known: " + ", ".join(sorted(ATTACKS))),
        ({"eps": -0.1}, "eps must be >= 0, got -0.1; pass a budget"),
        ({"steps": 0}, "steps must be >= 1, got 0"),
        ({"eot": 0}, "eot must be >= 1, got 0"),
        ({"name": "cw-l2", "const": 0.0}, "const must be > 0, got 0.0"),
    ],
)
def test_bad_attack_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        AttackConfig(**kwargs)


@pytest.mark.parametrize("scale", [2.0, -1.0, float("nan")])
def test_images_outside_the_unit_range_are_refused(scale):
    model = _classifier()
    x, y = _batch(2)
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\]"):
        run_attack(model, AttackConfig(), x * scale, y)


# --- the target on real data -----------------------------------------------------------


@pytest.fixture(scope="module")
def real_batch(tmp_path_factory):
    """16 CIFAR-10 test images (fixed random pick) and the trained undefended quick classifier."""
    if not CHECKPOINT.exists():
        pytest.skip(f"no trained checkpoint at {CHECKPOINT} (train the quick profile first)")
    if not DATA_DIR or not Path(DATA_DIR, "cifar10.zip").exists():
        pytest.skip("ATOP_DATA_DIR is unset or holds no cifar10.zip: needs real CIFAR-10")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATOP_CACHE_DIR", str(tmp_path_factory.mktemp("real-cache")))
        test = load_dataset("cifar10", "test", root=DATA_DIR, download=False)
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:16]
    return (
        test.images[idx].float() / 255,
        test.labels[idx],
        load_defense(CHECKPOINT, "cpu").classifier,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "cfg",
    [
        AttackConfig(name="pgd", steps=20),
        AttackConfig(name="apgd"),
        AttackConfig(name="cw-l2", search_steps=2),
        AttackConfig(name="stadv"),
    ],
    ids=lambda c: c.tag(),
)
def test_standard_attacks_break_the_undefended_quick_classifier(cfg, real_batch):
    x, y, model = real_batch
    adv = run_attack(model, cfg, x, y)
    with torch.no_grad():
        assert (model(adv).argmax(-1) == y).float().mean() < 0.05  # the target
