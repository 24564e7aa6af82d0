"""Notebook parameters are checked first; suites scale the paper's budgets to the profile."""

from pathlib import Path

import pytest

from atop_core import experiments as ex
from atop_core.config import get_profile
from atop_core.records import summarize_outcomes
from atop_core.tables import load_reference, selector


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dataset": "mnist"}, "unknown dataset 'mnist'; known: cifar10, cifar100, imagenette"),
        ({"profile": "huge"}, "unknown profile 'huge'"),
        ({"transform": "rt9"}, "unknown transform 'rt9'; known: rt1, rt2, rt3"),
        ({"purifier": "vae"}, "unknown purifier 'vae'; known: gan, ae"),
    ],
)
def test_bad_notebook_parameters_are_refused_naming_the_choices(kwargs, message):
    args = {"profile": "smoke", "dataset": "cifar10", "device": "cpu", **kwargs}
    with pytest.raises(ValueError, match=message):
        ex.setup(**args)


def test_reduced_profiles_cap_the_papers_budgets_and_name_what_ran():
    quick = {cfg.tag() for cfg in ex.ablation_suite(get_profile("quick"), "whole-model")}
    assert {"pgd-eot-10-eot4", "pgd-eot-20-eot4", "cw-l2-20"} <= quick
    assert not any(tag.startswith("autoattack") for tag in quick)  # hours on 2 CPU cores
    paper = {cfg.tag() for cfg in ex.ablation_suite(get_profile("paper"), "classifier-only")}
    assert {"pgd-10", "pgd-1000", "cw-l2-100", "autoattack", "fgsm", "clean"} <= paper
    # the rebuttal's BPDA+EOT with EOT 10: capped at the quick profile's EOT 4, whole at paper's
    assert ex.preliminary_pgd_eot(get_profile("quick")).tag() == "bpda-eot-10-eot4"
    assert ex.preliminary_pgd_eot(get_profile("paper")).tag() == "bpda-eot-10-eot10"


def test_the_whole_model_protocol_attacks_with_eot_and_the_classifier_only_without():
    quick = get_profile("quick")
    whole = {c.name: c.eot for c in ex.ablation_suite(quick, "whole-model")}
    assert whole["pgd-eot"] == quick.evaluation.eot
    assert all(c.eot in (1, None) for c in ex.ablation_suite(quick, "classifier-only"))
    paper = get_profile("paper")
    paper_whole = {c.name: c.eot for c in ex.ablation_suite(paper, "whole-model")}
    assert paper_whole["autoattack-rand"] == paper.evaluation.eot


def test_the_unseen_threat_models_attack_the_random_model_with_eot():
    """The generalization table's L2 and StAdv columns ran with one draw per step before."""
    quick = get_profile("quick")
    eots = {c.name: c.eot for c in ex.generalization_suite(quick)}
    assert eots == {"pgd-eot": 4, "pgd-eot-l2": 4, "stadv": 4}


def test_budget_sweeps_vary_one_budget_at_a_time():
    quick = get_profile("quick")
    steps = ex.steps_sweep(quick)
    assert [c.steps for c in steps] == [2, 5, 10] and {c.eot for c in steps} == {4}
    eots = ex.eot_sweep(quick)
    assert [c.eot for c in eots] == [1, 2, 4] and {c.steps for c in eots} == {10}


def _record(name, first, attack="pgd"):
    per_sample = {"index": list(range(len(first))), "first_draw": first}
    per_sample["correct_draws"] = [3 * f for f in first]
    return {
        "defense": {"name": name},
        "indices": {"n": len(first), "sha256": f"list of {len(first)}"},
        "attack": {"name": attack, "steps": 10, "eot": 1},
        "protocol": "whole-model",
        "draws": 3,
        "per_sample": per_sample,
        "unreliable": False,
        **summarize_outcomes(per_sample, 3),
    }


def test_summary_and_worst_case_tables_read_the_records():
    records = [_record("d", [1, 1, 0, 0]), _record("d", [1, 0, 1, 0], "square")]
    assert list(ex.summary(records)["single %"]) == [50.0, 50.0]
    worst = ex.worst_case_by_defense(records)
    assert worst.loc[0, "single %"] == 25.0 and worst.loc[0, "attacks"] == 2
    clean = _record("d", [1, 1, 1, 0, 1, 1], "clean")  # clean accuracy: on more images
    worst = ex.worst_case_by_defense([*records, clean])
    assert list(worst["attacks"]) == [2, 1] and list(worst["n"]) == [4, 6]


@pytest.mark.parametrize("profile", ["smoke", "quick", "paper"])
@pytest.mark.parametrize(
    "table_id",
    [
        "generalization",
        "table7_cifar10_ablation",
        "rebuttal_pgd_eot_preliminary",
        "rebuttal_standard_case",
        "authors_log_calibration",
    ],
)
def test_every_attacked_table_column_is_run_by_its_notebooks_suite(profile, table_id):
    """A column that selects steps or EOT the suite does not run would stay `not run` forever
    (the generalization table's L∞ column asked for the profile's 10 steps; the suite ran 20)."""
    p = get_profile(profile)
    suites = {
        "generalization": lambda: ex.generalization_suite(p),
        "table7_cifar10_ablation": lambda: [
            a for protocol in ex.PROTOCOL_ATTACKS for a in ex.ablation_suite(p, protocol)
        ],
        "rebuttal_pgd_eot_preliminary": lambda: [ex.preliminary_pgd_eot(p)],
        "rebuttal_standard_case": lambda: ex.standard_case_suite(p),
        "authors_log_calibration": lambda: [
            *ex.ablation_suite(p, "classifier-only"),
            *ex.calibration_suite(p),
        ],
    }
    entry, attacks = load_reference()["tables"][table_id], suites[table_id]()
    for column in entry["columns"]:
        sel = selector([entry.get("select"), column.get("select")], profile)
        names = [sel["attack"]] if isinstance(sel["attack"], str) else sel["attack"]
        if names == ["clean"] or (
            table_id != "rebuttal_standard_case"
            and set(names) & {"autoattack"}
            and p.evaluation.step_cap
        ):
            continue  # clean runs apart; AutoAttack only at full budgets (ablation_suite says why)
        assert any(
            a.name in names
            and sel["steps"] in (None, a.steps)
            and sel["eot"] in (None, a.eot)
            and (sel.get("eps") is None or abs(a.eps - sel["eps"]) < 1e-6)
            for a in attacks
        ), f"{table_id} column {column['id']} selects {sel}; the suite runs none such"


def test_the_generalization_table_attacks_every_purifier_and_the_baselines():
    run = ex.setup("quick", "cifar10", "cpu")
    names = [Path(p).stem for p in ex.generalization_defenses(run, "rt2")]
    assert names == [
        "defense-none-none-plain",
        "defense-none-none-at-fgsm-rs",
        "defense-gan-rt2-plain",
        "defense-gan-rt2-atop",
        "defense-ae-rt2-plain",
        "defense-ae-rt2-atop",
    ]


def test_each_dataset_decides_the_claims_its_profile_names():
    cifar = ex.claim_comparisons(ex.setup("quick", "cifar10", "cpu"))
    assert {c.claim for c in cifar} == {"C1", "C2", "C3", "C4", "C5", "C6"}
    assert all("GAN" not in c.statement for c in cifar)  # C1/C2 on the AE at quick
    imagenette = ex.setup("quick", "imagenette", "cpu")
    rows = ex.claim_comparisons(imagenette)
    assert [c.claim for c in rows] == ["C1", "C5"]
    assert all(c.a.n == 512 for c in rows)
    assert ex.randomness_arms(imagenette) == []  # the frozen split runs on CIFAR-10 only
    assert {c.claim for c in ex.claim_comparisons(ex.setup("paper", "imagenette", "cpu"))} == {
        "C1", "C2", "C3", "C4", "C5", "C6"
    }  # fmt: skip


def test_a_run_moves_to_another_dataset_with_that_datasets_profile():
    run = ex.setup("quick", "cifar10", "cpu")
    moved = run.on("imagenette")
    assert moved.dataset == "imagenette" and moved.profile.data.max_size == 32
    assert moved.on("cifar10").profile == run.profile
