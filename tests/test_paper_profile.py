"""The `paper` profile's own networks and stages end to end, on a tiny dataset on the CPU.

Its budgets (100 classifier epochs, PGD-200 with EOT 20) need a GPU; only the data, epochs and
attack budgets are cut here, so that every path the paper profile takes and no smaller profile
does (ResNet-18 and ResNet-34, the GAN at DeepFillv2's width 48, the PGD-AT baseline, batches of
16 and 8, ImageNette at 128 px) runs once on every machine that runs the tests.
"""

import pytest
import torch

from atop_core import pipeline
from atop_core.attacks import AttackConfig
from atop_core.config import DataConfig, get_profile, with_fields
from atop_core.defense import load_defense
from atop_core.evaluation import evaluate_defense
from tests.conftest import write_tree

CPU = torch.device("cpu")


def tiny_paper(dataset: str):
    paper = get_profile("paper")
    return get_profile(
        "paper",
        data=DataConfig(train_subset=16, n_eval=4),
        datasets=(dataset,),
        classifier=with_fields(paper.classifier, epochs=1, adv_steps=2, train_subset=16),
        purifiers=("gan",),
        transforms=("rt2",),
        purifier=with_fields(paper.purifier, epochs=1, train_subset=16),
        finetune=with_fields(paper.finetune, epochs=1, train_subset=8),
        evaluation=with_fields(
            paper.evaluation, steps=1, eot=2, draws=2, sanity_n=2, square_queries=20
        ),
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dataset", "arch", "size"), [("cifar10", "resnet18", 32), ("imagenette", "resnet34", 128)]
)
def test_the_paper_profile_trains_and_evaluates_its_own_networks(
    tmp_path, monkeypatch, dataset, arch, size
):
    write_tree(tmp_path / "data", dataset, per_class=1, size=size)
    monkeypatch.setenv("ATOP_DATA_DIR", str(tmp_path / "data"))
    profile = tiny_paper(dataset)
    saved = {s["file"]: s for s in pipeline.train_chain(profile, dataset, CPU)}
    assert set(saved) == {
        "defense-none-none-plain.pt",
        "defense-none-none-at-pgd.pt",
        "defense-gan-rt2-plain.pt",
        "defense-gan-rt2-atop.pt",
    }
    assert saved["defense-none-none-at-pgd.pt"]["classifier"]["adv"] == "pgd"
    path = pipeline.defense_path(profile, dataset, "gan", "rt2", True)
    defense = load_defense(path, CPU)
    assert defense.meta["classifier_arch"] == arch and defense.meta["purifier"]["width"] == 48
    assert defense.purifier.net.coarse[1].conv.out_channels == 2 * 48  # features and gates
    record, _ = evaluate_defense(
        path, profile, AttackConfig(name="pgd-eot", steps=1, eot=2), protocol="whole-model",
        device=CPU,
    )  # fmt: skip
    assert record["complete"] and record["n"] == 4 and record["draws"] == 2
    assert set(record["sanity"]) >= {"large_eps", "more_budget", "square", "bare_classifier"}
