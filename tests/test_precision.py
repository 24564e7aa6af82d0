"""bf16 autocast (`ATOP_AMP`): where it applies, what records say, and that attacks stay strong."""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atop_core.__main__ import main
from atop_core.attacks import ATTACKS, AttackConfig, run_attack
from atop_core.config import (
    ClassifierConfig,
    FinetuneConfig,
    PurifierConfig,
    TransformConfig,
    get_profile,
    settings,
)
from atop_core.defense import DefendedModel
from atop_core.evaluation import evaluate_defense
from atop_core.harness import evaluate
from atop_core.nets.classifiers import build_classifier
from atop_core.nets.gan import PatchDiscriminator
from atop_core.nets.purifiers import build_purifier
from atop_core.precision import BF16, FLOAT32, amp_enabled, autocast, precision_name
from atop_core.records import RecordMismatchError
from atop_core.train import (
    classifier_state,
    classifier_step,
    finetune_inputs,
    finetune_step,
    fit,
    pretrain_step,
    purifier_state,
)
from atop_core.transforms import RandomTransform
from tests.conftest import save_tiny_defense, write_tree

SIZE = 32
CPU = torch.device("cpu")


class AutocastProbe(nn.Module):
    """Wraps a network and notes, per forward, whether gradients and autocast were on."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, x):
        self.calls.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))
        return self.net(x)


def _classifier():
    torch.manual_seed(0)
    return build_classifier("small", 10, SIZE, width=0.25).eval()


def _batch(n=8):
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 3, SIZE, SIZE, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize(("setting", "on_cpu"), [("auto", False), ("off", False), ("on", True)])
def test_the_setting_turns_autocast_on_for_the_cpu_only_when_forced(monkeypatch, setting, on_cpu):
    monkeypatch.setenv("ATOP_AMP", setting)
    assert amp_enabled("cpu") is on_cpu
    assert precision_name(CPU) == (BF16 if on_cpu else FLOAT32)


def test_auto_turns_autocast_on_for_a_cuda_device_with_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_enabled("cuda")
    monkeypatch.setenv("ATOP_AMP", "off")
    assert not amp_enabled("cuda")


@pytest.mark.parametrize("value", ["fast", "ON"])  # exact, as run_all.sh checks it
def test_a_bad_setting_is_refused_naming_it_and_the_choices(monkeypatch, value):
    monkeypatch.setenv("ATOP_AMP", value)
    with pytest.raises(ValueError, match=rf"ATOP_AMP='{value}'.*'auto', 'on', 'off'"):
        amp_enabled("cpu")


def test_forcing_autocast_on_a_cuda_device_without_bf16_is_refused(monkeypatch):
    monkeypatch.setenv("ATOP_AMP", "on")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(ValueError, match="no bf16 support; set ATOP_AMP=off"):
        amp_enabled("cuda")


@pytest.mark.parametrize(("setting", "expect"), [("on", True), ("off", False)])
def test_attacks_run_under_autocast_and_judging_never_does(monkeypatch, setting, expect):
    monkeypatch.setenv("ATOP_AMP", setting)
    probe = AutocastProbe(_classifier())
    x, y = _batch()
    evaluate(probe, AttackConfig(name="pgd", steps=2), x.mul(255).byte(), y, "whole-model", CPU)
    attacking = [autocast for grad, autocast in probe.calls if grad]
    judging = [autocast for grad, autocast in probe.calls if not grad]
    assert attacking and all(a is expect for a in attacking)
    assert judging and not any(judging)
    assert not torch.is_autocast_enabled("cpu")  # restored after the attack


def test_square_stays_in_float32_under_autocast(monkeypatch):
    monkeypatch.setenv("ATOP_AMP", "on")
    probe = AutocastProbe(_classifier())
    x, y = _batch(4)
    run_attack(probe, AttackConfig(name="square", queries=5), x, y)
    assert probe.calls and not any(autocast for _, autocast in probe.calls)
    assert ATTACKS["square-l2"].float32 and not ATTACKS["pgd-eot"].float32
    assert ATTACKS["clean"].float32  # nothing runs: a clean record never says bf16


def test_adversarial_images_keep_the_input_dtype_under_autocast(monkeypatch):
    monkeypatch.setenv("ATOP_AMP", "on")
    x, y = _batch(4)
    defense = DefendedModel(
        _classifier(),
        build_purifier("ae", width=4, image_size=SIZE),
        RandomTransform(TransformConfig(), seed=0),
    ).eval()
    adv = run_attack(defense, AttackConfig(name="pgd-eot", steps=2, eot=2), x, y)
    assert adv.dtype == torch.float32
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6


def test_bf16_pgd_breaks_a_trained_classifier_as_float32_pgd_does(monkeypatch):
    """The attack must stay strong in bf16: on a classifier that memorised 64 images, PGD-10 at a
    budget where float32 PGD fools it on some images but not all, bf16 PGD reaches about the same
    accuracy and loss (measured here: 19 of 64 right and CE 1.56 for both)."""
    torch.manual_seed(0)
    model = build_classifier("small", 10, SIZE, width=0.5)
    x, y = _batch(64)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):  # memorise the batch: large margins, so the attack has work to do
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    cfg = AttackConfig(name="pgd", steps=10, eps=3 / 255, seed=1)
    right, loss = {}, {}
    for setting in ("off", "on"):
        monkeypatch.setenv("ATOP_AMP", setting)
        adv = run_attack(model, cfg, x, y)
        with torch.no_grad():
            logits = model(adv)
        right[setting] = (logits.argmax(1) == y).sum().item()
        loss[setting] = F.cross_entropy(logits, y).item()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).sum().item() == 64
    assert 0 < right["off"] < 48  # a budget where float32 PGD fools some images, not all ...
    assert right["on"] <= right["off"] + 4  # ... and bf16 PGD about as many
    assert loss["on"] >= 0.9 * loss["off"]


@pytest.fixture()
def defense_path(tmp_path, monkeypatch):
    write_tree(tmp_path, "cifar10", per_class=1)  # 10 test images
    monkeypatch.setenv("ATOP_DATA_DIR", str(tmp_path))
    return save_tiny_defense(tmp_path / "defense-ae-rt2-atop.pt")


PGD_EOT = AttackConfig(name="pgd-eot", steps=1, eot=2, seed=1)


def _record(path, attack=PGD_EOT):
    kw = {"protocol": "whole-model", "device": CPU, "n": 10, "draws": 2, "sanity": False}
    return evaluate_defense(path, get_profile("smoke"), attack, **kw)


def test_a_record_says_when_it_was_attacked_under_bf16_and_is_never_mixed(
    defense_path, monkeypatch
):
    record, out = _record(defense_path)
    assert "precision" not in record  # float32: as every record before the field
    monkeypatch.setenv("ATOP_AMP", "on")
    with pytest.raises(RecordMismatchError, match="differs in: precision"):
        _record(defense_path)
    out.unlink()
    record, _ = _record(defense_path)
    assert record["precision"] == BF16 and json.loads(out.read_text())["precision"] == BF16
    clean, _ = _record(defense_path, AttackConfig(name="clean"))
    assert "precision" not in clean  # nothing was attacked


def test_training_steps_run_under_autocast_and_the_log_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("ATOP_AMP", "on")
    model, cfg = _classifier(), ClassifierConfig(epochs=1, batch_size=8, lr=0.05)
    state = classifier_state(model, cfg, steps_per_epoch=2)
    step, seen = classifier_step(state, cfg), []

    def noted(*args):
        seen.append(torch.is_autocast_enabled("cpu"))
        return step(*args)

    x, y = _batch(16)
    fit("t", state, noted, x.mul(255).byte(), y, epochs=1, batch_size=8, seed=0,
        ckpt_path=tmp_path / "c.pt", device=CPU)  # fmt: skip
    assert seen == [True, True]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    log = json.loads((tmp_path / "c.log.json").read_text())
    assert log[0]["precision"] == BF16


def test_the_gan_purifier_trains_under_autocast(monkeypatch):
    """Pretraining and AToP steps of the GAN (spectral-norm D included) give finite losses."""
    monkeypatch.setenv("ATOP_AMP", "on")
    torch.manual_seed(0)
    state = purifier_state(
        build_purifier("gan", width=8, image_size=SIZE),
        PatchDiscriminator(8, SIZE),
        1e-3,
        (0.5, 0.999),
    )
    transform = RandomTransform(TransformConfig(kind="rt2"), seed=0)
    classifier = _classifier().requires_grad_(False)
    cfg = FinetuneConfig()
    steps = [
        pretrain_step(state, transform, PurifierConfig(kind="gan")),
        finetune_step(state, transform, classifier, cfg, 0.01, finetune_inputs(cfg, classifier)),
    ]
    x, y = _batch(8)
    for step in steps:
        with autocast(CPU):
            metrics = step(x, y, torch.Generator().manual_seed(0))
        assert all(math.isfinite(v) for v in metrics.values())
    assert all(p.dtype == torch.float32 for p in state.models["purifier"].parameters())


def test_the_command_line_flags_set_the_settings_of_their_command_alone(
    tmp_path, monkeypatch, capsys
):
    import atop_core.__main__ as cli

    seen = []
    monkeypatch.setattr(cli, "run", lambda parser, args: seen.append(settings()) or 0)
    environ = dict(os.environ)
    assert main(["train", "--amp", "off", "--data-dir", str(tmp_path)]) == 0
    assert (seen[0].amp, seen[0].data_dir) == ("off", tmp_path)
    assert dict(os.environ) == environ and settings().amp == "auto"  # nothing leaks out
    with pytest.raises(SystemExit):
        main(["train", "--amp", "fast"])
    assert "invalid choice: 'fast'" in capsys.readouterr().err


def test_the_report_header_counts_records_attacked_under_bf16():
    import pandas as pd

    from atop_core.report import precision_statement
    from atop_core.tables import record_row

    assert precision_statement(pd.DataFrame({"precision": [FLOAT32] * 3})) == ""
    mixed = pd.DataFrame({"precision": [BF16, FLOAT32, BF16]})
    assert precision_statement(mixed).startswith(
        "Precision: 2 of 3 records were attacked under bf16"
    )
    record = {"dataset": "cifar10", "profile": "smoke", "protocol": "whole-model", "n": 1}
    record |= {"defense": {"name": "d"}, "attack": {"name": "pgd"}}
    record |= {"accuracy": dict.fromkeys(("single", "vote", "worst"), 0.0)}
    record |= {"interval": dict.fromkeys(("single", "vote", "worst"), [0.0, 1.0])}
    assert record_row(record)["precision"] == FLOAT32
    assert record_row({**record, "precision": BF16})["precision"] == BF16
