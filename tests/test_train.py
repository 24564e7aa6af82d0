"""Training stages: augmentation, resume, AToP fine-tuning that leaves the classifier untouched."""

import dataclasses

import pytest
import torch

from atop_core.attacks import AttackConfig, run_attack
from atop_core.config import ClassifierConfig, FinetuneConfig, PurifierConfig, TransformConfig
from atop_core.defense import freeze
from atop_core.nets.classifiers import build_classifier
from atop_core.nets.purifiers import build_discriminator, build_purifier
from atop_core.train import (
    adversarial_training_examples,
    augment,
    classifier_state,
    classifier_step,
    epoch_batches,
    finetune_inputs,
    finetune_step,
    fit,
    linf_attack,
    pretrain_step,
    purifier_state,
)
from atop_core.transforms import RandomTransform

SIZE = 32


def _data(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=g, dtype=torch.uint8),
        torch.randint(0, 10, (n,), generator=g),
    )


def _classifier():
    torch.manual_seed(0)
    return build_classifier("small", 10, SIZE, width=0.25)


def test_epoch_batches_cover_the_data_once_and_repeat_by_seed():
    batches = epoch_batches(10, 3, seed=1, epoch=0)
    flat = torch.cat(batches)
    assert len(batches) == 3 and len(set(flat.tolist())) == 9  # the partial batch is dropped
    assert all(torch.equal(a, b) for a, b in zip(batches, epoch_batches(10, 3, 1, 0), strict=True))
    assert not torch.equal(flat, torch.cat(epoch_batches(10, 3, 1, 1)))


def test_augment_translates_and_flips_without_changing_shape_or_values():
    x = torch.rand(8, 3, SIZE, SIZE)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= x.min() and out.max() <= x.max()
    assert torch.equal(out, augment(x, torch.Generator().manual_seed(0)))
    flat = torch.full((2, 3, SIZE, SIZE), 0.3)
    assert torch.equal(augment(flat, torch.Generator()), flat)


@pytest.mark.parametrize("attack", ["fgsm", "pgd", "fgsm-rs"])
def test_training_attacks_stay_in_the_eps_ball_and_pixel_range(attack):
    model, (x, y) = _classifier(), _data(4)
    x = x.float() / 255
    eps = 8 / 255
    if attack == "fgsm":
        adv = linf_attack(model, x, y, eps, steps=1, alpha=eps, g=torch.Generator())
    elif attack == "pgd":
        g = torch.Generator().manual_seed(0)
        adv = linf_attack(model, x, y, eps, steps=3, alpha=eps / 4, g=g, start=True)
    else:
        cfg = ClassifierConfig(adv="fgsm-rs")
        adv = adversarial_training_examples(model, x, y, cfg, torch.Generator().manual_seed(0))
    assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() > eps / 2


def test_adversarial_training_crafts_on_the_single_view_it_trains():
    """Flip averaging is for evaluation: AT examples come from one view, and the flag survives."""
    model, (x, y) = _classifier(), _data(4)
    x, cfg = x.float() / 255, ClassifierConfig(adv="pgd", adv_steps=2)
    single = adversarial_training_examples(model, x, y, cfg, torch.Generator().manual_seed(0))
    model.flip_average = True
    crafted = adversarial_training_examples(model, x, y, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(crafted, single) and model.flip_average
    g, eps = torch.Generator().manual_seed(0), cfg.adv_eps
    averaged = linf_attack(model.eval(), x, y, eps, 2, 1.25 * eps, g, start=True)
    assert not torch.equal(averaged, single)  # the averaged view would give other examples


def test_classifier_training_lowers_the_loss():
    model, (x, y) = _classifier(), _data(32)
    cfg = ClassifierConfig(epochs=15, batch_size=32, lr=0.05, label_smoothing=0.0)
    state = classifier_state(model, cfg, steps_per_epoch=1)
    step = classifier_step(state, cfg)
    losses = [step(x.float() / 255, y, torch.Generator().manual_seed(0))["loss"] for _ in range(15)]
    assert losses[-1] < 0.5 * losses[0]


def _finetune_setup(kind="gan", work_size=0):
    classifier = freeze(_classifier())
    purifier = build_purifier(kind, width=4, image_size=SIZE, work_size=work_size)
    disc = build_discriminator(width=4, image_size=work_size or SIZE) if kind == "gan" else None
    state = purifier_state(purifier, disc, lr=1e-3, betas=(0.5, 0.999))
    transform = RandomTransform(TransformConfig(kind="rt2"), seed=0)
    cfg = FinetuneConfig(lam=1.0)
    step = finetune_step(state, transform, classifier, cfg, 1.0, finetune_inputs(cfg, classifier))
    return classifier, purifier, step


@pytest.mark.parametrize(("kind", "work_size"), [("gan", 0), ("ae", 0), ("gan", 2 * SIZE)])
def test_finetuning_moves_the_purifier_and_leaves_the_classifier_bit_identical(kind, work_size):
    """With a work_size, t, g and D run up-sampled and f sees the result at native size."""
    classifier, purifier, step = _finetune_setup(kind, work_size)
    before_f = {k: v.clone() for k, v in classifier.state_dict().items()}
    before_g = [p.detach().clone() for p in purifier.parameters()]
    x, y = _data(8)
    for i in range(2):
        metrics = step(x.float() / 255, y, torch.Generator().manual_seed(i))
    assert {"l1", "ce", "acc", "d" if kind == "gan" else "l1"} <= set(metrics)
    assert all(torch.equal(v, classifier.state_dict()[k]) for k, v in before_f.items())
    assert all(p.grad is None for p in classifier.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before_g, purifier.parameters(), strict=True))


@pytest.mark.parametrize("work_size", [0, 2 * SIZE])
def test_pretraining_lowers_the_reconstruction_loss(work_size):
    purifier = build_purifier("ae", width=8, image_size=SIZE, work_size=work_size)
    state = purifier_state(purifier, None, lr=2e-3, betas=(0.9, 0.999))
    step = pretrain_step(
        state, RandomTransform(TransformConfig(), seed=0), PurifierConfig(kind="ae")
    )
    smooth = torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    x = torch.nn.functional.interpolate(smooth, size=SIZE, mode="bilinear")  # image-like
    l1 = [step(x, None, torch.Generator().manual_seed(0))["l1"] for _ in range(30)]
    assert l1[-1] < 0.7 * l1[0]


def _fit_two_epochs(tmp_path, name, state, step, crash_at=None):
    """`fit` over 24 fixed images for two epochs; raises KeyboardInterrupt at call `crash_at`."""
    x, y = _data(24)
    calls = {"n": 0}

    def maybe_crash(*args):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise KeyboardInterrupt
        return step(*args)

    fit(
        "t",
        state,
        maybe_crash,
        x,
        y,
        epochs=2,
        batch_size=8,
        seed=0,
        ckpt_path=tmp_path / f"{name}.pt",
        device=torch.device("cpu"),
        save_every_s=0.0,
    )
    return state


def _fit_run(tmp_path, name, crash_at=None):
    model, cfg = _classifier(), ClassifierConfig(epochs=2, batch_size=8, lr=0.05)
    state = classifier_state(model, cfg, steps_per_epoch=3)
    return model, _fit_two_epochs(tmp_path, name, state, classifier_step(state, cfg), crash_at)


def test_killed_training_resumes_to_identical_weights(tmp_path):
    reference, _ = _fit_run(tmp_path, "whole")
    with pytest.raises(KeyboardInterrupt):
        _fit_run(tmp_path, "killed", crash_at=5)  # mid second epoch
    resumed, state = _fit_run(tmp_path, "killed")
    assert state.epoch == 2 and len(state.log) == 2
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def _purifier_fit_run(tmp_path, name, stage, crash_at=None):
    """Two epochs of a purifier stage whose transform and PGD start draw their randomness."""
    classifier = freeze(_classifier())
    torch.manual_seed(0)
    purifier = build_purifier("ae", width=4, image_size=SIZE)
    state = purifier_state(purifier, None, lr=1e-3, betas=(0.9, 0.999))
    transform = RandomTransform(TransformConfig(kind="rt2"), seed=0)
    if stage == "pretrain":
        step = pretrain_step(state, transform, PurifierConfig(kind="ae"))
    else:
        cfg = FinetuneConfig(attack="pgd", steps=2)
        craft = finetune_inputs(cfg, classifier)
        step = finetune_step(state, transform, classifier, cfg, 0.0, craft)
    _fit_two_epochs(tmp_path, name, state, step, crash_at)
    return purifier


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_a_resumed_purifier_stage_draws_what_an_uninterrupted_one_draws(tmp_path, stage):
    """The transform's noise and masks and PGD's start follow (seed, epoch, step), not the run."""
    reference = _purifier_fit_run(tmp_path, "whole", stage)
    with pytest.raises(KeyboardInterrupt):
        _purifier_fit_run(tmp_path, "killed", stage, crash_at=5)  # mid second epoch
    resumed = _purifier_fit_run(tmp_path, "killed", stage)
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_fit_writes_a_per_epoch_json_log(tmp_path):
    _fit_run(tmp_path, "logged")
    log = (tmp_path / "logged.log.json").read_text()
    assert '"epoch": 2' in log and '"loss"' in log and '"train_s"' in log


def test_finetune_inputs_are_the_configured_attack_or_the_clean_images():
    """attack "none" is the authors' `*-clean` control: L_df and CE see the clean image."""
    model, (x, y) = _classifier(), _data(4)
    x = x.float() / 255
    g = torch.Generator().manual_seed(0)
    assert torch.equal(finetune_inputs(FinetuneConfig(attack="none"), model)(x, y, g), x)
    fgsm_cfg = FinetuneConfig()
    # FGSM: the evaluation's (torchattacks') FGSM on the same classifier, to the bit
    evaluation_fgsm = run_attack(model, AttackConfig("fgsm", eps=fgsm_cfg.eps), x, y)
    assert torch.equal(finetune_inputs(fgsm_cfg, model)(x, y, g), evaluation_fgsm)
    pgd_inputs = finetune_inputs(FinetuneConfig(attack="pgd", steps=3), model)
    adv = pgd_inputs(x, y, torch.Generator().manual_seed(1))
    assert 0 < (adv - x).abs().max() <= 8 / 255 + 1e-6
    torch.manual_seed(123)  # the random start comes from the step's generator, not the global one
    assert torch.equal(pgd_inputs(x, y, torch.Generator().manual_seed(1)), adv)


def test_finetune_config_refuses_unknown_choices():
    with pytest.raises(ValueError, match="unknown finetune attack 'cw'; known: fgsm, pgd, none"):
        FinetuneConfig(attack="cw")
    with pytest.raises(ValueError, match="unknown reconstruction target 'both'"):
        dataclasses.replace(FinetuneConfig(), target="both")
