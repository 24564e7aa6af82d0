"""The paper's reference numbers and the tables built from records beside them."""

import math
from pathlib import Path

import pytest

from atop_core import tables
from atop_core.io import write_json

PAPER_DOC = Path(__file__).resolve().parents[1] / "docs" / "paper.md"  # the transcription
EPS = 8 / 255
NOTEBOOKS = [
    f"notebooks/{name}.ipynb"
    for name in (
        "10_train_classifier",
        "20_pretrain_purifier",
        "30_atop_finetune",
        "40_evaluate_attacks",
        "50_rt_ablation",
        "60_missing_rate_mix_number",
        "70_generalization",
        "90_tables_and_figures",
    )
]
REQUIRED_TABLES = (
    "table7_cifar10_ablation",
    "table8_imagenette_ablation",
    "rebuttal_standard_case",
    "rebuttal_fgsm_protocols",
    "rebuttal_pgd_eot_preliminary",
    "rebuttal_pgd_eot_full_gradient",
    "rebuttal_random_vs_fixed_mask",
    "table2_sota_cifar10",
    "table4_sota_cifar100",
    "generalization",
)
REQUIRED_FIGURES = (
    "figure2_random_transforms",
    "missing_rate_mix_number",
    "robust_vs_eps",
    "robust_vs_steps_eot",
    "training_curves",
    "purified_examples",
)


def make_record(defense="defense-gan-rt2-atop", attack="pgd-eot", single=0.5, **kw) -> dict:
    """A record as `evaluation.evaluate_defense` writes it, with the fields tables read."""
    lo, hi = kw.pop("interval", (single - 0.05, single + 0.05))
    return {
        "schema": 1,
        "dataset": kw.pop("dataset", "cifar10"),
        "profile": kw.pop("profile", "quick"),
        "protocol": kw.pop("protocol", "whole-model"),
        "n": kw.pop("n", 512),
        "draws": 5,
        "defense": {"name": defense, "file": f"{defense}.pt", "classifier": "small"},
        "attack": {
            "name": attack,
            "eps": kw.pop("eps", EPS),
            "steps": kw.pop("steps", 10),
            "eot": kw.pop("eot", 4),
        },
        "accuracy": {"single": single, "vote": single, "worst": single / 2},
        "interval": {k: [lo, hi] for k in ("single", "vote", "worst")},
        "unreliable": kw.pop("unreliable", False),
        "complete": kw.pop("complete", True),
    }


def tiny_reference(value=40.0, source="rebuttal", column_select=None, **entry) -> dict:
    """One 1x1 table whose cell wants PGD-10 on defense-gan-rt2-atop, CIFAR-10, whole model."""
    cell = {"value": value, "source": source}
    table = {
        "title": "tiny",
        "paper_ref": "Table 0",
        "source": "rebuttal",
        "protocol": "whole-model",
        "blocks": ["whole-model"],
        "notebook": NOTEBOOKS[3],
        "select": {"dataset": "cifar10", "eps": EPS},
        "row_headers": ["Defense"],
        "columns": [
            {"id": "c", "label": "PGD-10", "select": column_select or {"attack": "pgd-eot"}}
        ],
        "rows": [
            {"id": "r", "labels": ["GAN"], "select": {"defense": "defense-gan-rt2-atop"}}
            | {"cells": {"c": cell}}
        ],
        **entry,
    }
    return {"notebooks": NOTEBOOKS, "tables": {"tiny": table}, "figures": {}}


def one_cell(records: list[dict], reference: dict, profile="quick") -> dict:
    long = tables.build_table("tiny", tables.records_frame(records), reference, profile=profile)
    assert len(long) == 1
    return long.iloc[0].to_dict()


def test_reference_data_is_well_formed():
    assert tables.check_reference(tables.load_reference()) == []


def test_every_table_and_figure_maps_to_a_project_notebook():
    reference = tables.load_reference()
    assert reference["notebooks"] == NOTEBOOKS
    assert set(REQUIRED_TABLES) <= set(reference["tables"])
    assert set(REQUIRED_FIGURES) <= set(reference["figures"])
    for entry in {**reference["tables"], **reference["figures"]}.values():
        assert entry["notebook"] in NOTEBOOKS


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda c: c.pop("source"), "source None"),
        (lambda c: c.update(value=123.0), "is not a percentage"),
        (lambda c: c.update(source="inferred"), "needs a note"),
        (lambda c: c.update(value=None), "source 'rebuttal' for None"),
    ],
)
def test_check_reference_names_a_malformed_cell(change, problem):
    reference = tiny_reference()
    change(reference["tables"]["tiny"]["rows"][0]["cells"]["c"])
    assert any(problem in p for p in tables.check_reference(reference))


def test_check_reference_refuses_unknown_notebook_and_selector_key():
    reference = tiny_reference(notebook="notebooks/99_nowhere.ipynb")
    reference["tables"]["tiny"]["columns"][0]["select"]["stepz"] = 10
    problems = tables.check_reference(reference)
    assert any("99_nowhere" in p for p in problems)
    assert any("'stepz'" in p for p in problems)


def cell_of(reference: dict, table_id: str, row_id: str, column_id: str) -> dict:
    row = next(r for r in reference["tables"][table_id]["rows"] if r["id"] == row_id)
    return row["cells"][column_id]


@pytest.mark.parametrize(
    "table_id, row_id, column_id, value, source",
    [
        ("table7_cifar10_ablation", "rt1-plain", "cw-100", 21.09, "rebuttal"),
        ("table7_cifar10_ablation", "rt2-atop", "pgd-1000", 84.38, "rebuttal"),
        ("table7_cifar10_ablation", "rt3-plain", "fgsm", 67.97, "inferred"),
        ("table7_cifar10_ablation", "rt1-atop", "fgsm", None, "unknown"),
        ("table8_imagenette_ablation", "rt1-plain", "fgsm", 18.95, "rebuttal"),
        ("table8_imagenette_ablation", "rt3-atop", "pgd-1000", 72.85, "rebuttal"),
        ("rebuttal_standard_case", "gan-atop", "cifar10", 72.85, "rebuttal"),
        ("rebuttal_standard_case", "ae-plain", "cifar100", 38.48, "rebuttal"),
        ("rebuttal_fgsm_protocols", "whole-model", "rt1", 39.84, "rebuttal"),
        ("rebuttal_pgd_eot_preliminary", "rt1-atop", "pgd-eot", 43.16, "rebuttal"),
        ("rebuttal_pgd_eot_full_gradient", "rt2-atop", "pgd-eot", 64.06, "rebuttal"),
        ("rebuttal_random_vs_fixed_mask", "rt2-plain", "fixed", 70.12, "rebuttal"),
        ("table2_sota_cifar10", "gan-atop", "wrn28-robust", None, "unknown"),
    ],
)
def test_reference_numbers_are_the_papers(table_id, row_id, column_id, value, source):
    cell = cell_of(tables.load_reference(), table_id, row_id, column_id)
    assert (cell["value"], cell["source"]) == (value, source)


def paper_doc_section(text: str, name: str) -> str:
    """The part of docs/paper.md under the heading that names `name` (as `name`), up to the next
    heading; empty when no heading names it."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#") and f"`{name}`" in line:
            rest = lines[i + 1 :]
            stop = next((j for j, other in enumerate(rest) if other.startswith("#")), len(rest))
            return "\n".join(rest[:stop])
    return ""


def test_every_reference_number_appears_in_the_paper_document():
    """docs/paper.md transcribes paper.yaml: each table's numbers appear under the heading that
    names the table, so a number changed in the YAML and not in the document fails."""
    text = PAPER_DOC.read_text(encoding="utf-8")
    reference = tables.load_reference()
    entries = {**reference["tables"], **reference["figures"]}
    for name, entry in entries.items():
        section = paper_doc_section(text, name)
        for row in entry.get("rows", []):
            for column, cell in row["cells"].items():
                if cell["value"] is not None:
                    shown = f"{cell['value']:.2f}" if entry.get("unit", "%") == "%" else ""
                    shown = shown or f"{cell['value']:g}"
                    assert section, f"docs/paper.md has no heading naming `{name}`"
                    assert shown in section, f"{name}/{row['id']}/{column}: {shown}"


def test_unknown_paper_cell_renders_as_unknown_beside_ours():
    cell = one_cell([make_record(single=0.25)], tiny_reference(value=None, source="unknown"))
    assert math.isnan(cell["paper"]) and math.isnan(cell["diff"])
    assert tables.format_cell(cell) == "?? → 25.00 [20.0, 30.0]"


def test_missing_record_renders_not_run_with_a_reason():
    cell = one_cell([make_record(defense="defense-ae-rt2-atop")], tiny_reference())
    assert cell["status"] == tables.NOT_RUN and math.isnan(cell["ours"])
    assert tables.format_cell(cell) == "40.00 → not run"
    assert cell["reason"] == "no matching record"


def test_difference_is_ours_minus_paper_in_points():
    record = make_record(single=0.5, interval=(0.45625, 0.54375))
    cell = one_cell([record], tiny_reference(value=40.0))
    assert (cell["ours"], cell["diff"], cell["n"]) == (50.0, 10.0, 512)
    assert cell["lo"] == pytest.approx(45.625) and cell["hi"] == pytest.approx(54.375)
    assert tables.format_cell(cell) == "40.00 → 50.00 [45.6, 54.4] (+10.00)"


def test_unreliable_and_unchecked_records_are_marked():
    unreliable = one_cell([make_record(unreliable=True)], tiny_reference())
    assert unreliable["unreliable"] is True
    unchecked = one_cell([make_record(unreliable=None)], tiny_reference())
    assert tables.ours_text(unreliable).startswith(tables.UNRELIABLE_MARK)
    assert tables.ours_text(unchecked).endswith(tables.UNCHECKED_MARK)


def test_inferred_paper_cell_is_marked():
    reference = tiny_reference(source="inferred")
    reference["tables"]["tiny"]["rows"][0]["cells"]["c"]["note"] = "from another table"
    cell = one_cell([], reference)
    assert tables.paper_text(cell) == "40.00" + tables.INFERRED_MARK


def test_worst_of_the_matching_records_is_reported():
    records = [
        make_record(attack="autoattack", single=0.6),
        make_record(attack="autoattack-rand", single=0.4),
    ]
    select = {"attack": ["autoattack", "autoattack-rand"]}
    cell = one_cell(records, tiny_reference(column_select=select))
    assert (cell["ours"], cell["matches"]) == (40.0, 2)
    assert "autoattack-rand" in cell["record"]


def test_budget_and_eps_select_the_exact_run():
    select = {"attack": "pgd-eot", "steps": "profile", "eot": "profile"}
    records = [
        make_record(single=0.1, eps=16 / 255),  # another eps: a sweep point, not this cell
        make_record(single=0.2, steps=20),  # another budget
        make_record(single=0.3, steps=10, eot=4),  # the quick profile's budget
    ]
    cell = one_cell(records, tiny_reference(column_select=select))
    assert cell["ours"] == pytest.approx(30.0)
    assert "steps 10" in cell["wanted"] and "eot 4" in cell["wanted"]


def test_records_of_another_profile_are_not_used():
    cell = one_cell([make_record(profile="smoke")], tiny_reference(), profile="quick")
    assert cell["status"] == tables.NOT_RUN


def test_partial_records_are_not_used():
    cell = one_cell([make_record(complete=False)], tiny_reference())
    assert cell["status"] == tables.NOT_RUN


def test_defense_suffix_selects_the_variant_run():
    select = {"attack": "pgd-eot", "defense_suffix": "-fixed-mask"}
    records = [make_record(single=0.9), make_record("defense-gan-rt2-atop-fixed-mask", single=0.7)]
    assert one_cell(records, tiny_reference(column_select=select))["ours"] == pytest.approx(70.0)


def test_not_run_reason_names_a_dataset_without_records():
    reference = tiny_reference()
    reference["tables"]["tiny"]["select"]["dataset"] = "cifar100"
    cell = one_cell([make_record()], reference, profile="quick")
    assert cell["reason"] == "no cifar100 records at this profile"


def test_records_without_a_name_are_named_by_their_file(tmp_path):
    old = make_record(defense="ignored")
    old.pop("schema")
    old["defense"] = {"file": "defense-none-none-at-fgsm-rs.pt", "classifier": "small"}
    folder = tmp_path / "quick" / "cifar10"
    write_json(folder / "defense-none-none-at-fgsm-rs__pgd-eot-10-eot4__whole-model.json", old)
    write_json(folder / "defense-x__clean__whole-model__shard-0-of-2.json", make_record())
    frame = tables.load_records_frame(tmp_path / "quick")
    assert len(frame) == 1  # the shard file is left for records.merge_all
    row = frame.iloc[0]
    assert row["defense"] == "defense-none-none-at-fgsm-rs"
    assert (row["tag"], row["adversarial_training"], row["schema"]) == (
        "pgd-eot-10-eot4",
        "fgsm-rs",
        0,
    )


def test_every_reference_table_builds_from_no_records():
    reference = tables.load_reference()
    empty = tables.records_frame([])
    for table_id, entry in reference["tables"].items():
        long = tables.build_table(table_id, empty, reference, profile="quick")
        n_blocks = len(entry.get("blocks") or [None])
        assert len(long) == n_blocks * len(entry["rows"]) * len(entry["columns"])
        assert set(long["status"]) <= {tables.NOT_RUN, tables.NOT_COMPARED}


def test_build_table_needs_a_profile_when_records_do_not_tell():
    reference = tiny_reference()
    with pytest.raises(ValueError, match="profile="):
        tables.build_table("tiny", tables.records_frame([]), reference)
