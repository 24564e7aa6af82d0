"""Evaluating saved defenses into records: resume, shards, and refusal of foreign records."""

import json

import pytest
import torch

from atop_core.attacks import AttackConfig
from atop_core.config import get_profile
from atop_core.evaluation import evaluate_defense, parse_shard, shard_batches
from atop_core.indicators import INDICATORS
from atop_core.records import RecordMismatchError, merge_all

ATTACK = AttackConfig(name="pgd-eot", steps=1, eot=2, seed=1)
VOLATILE = ("wall_s", "env", "indices", "shards", "sanity", "unreliable")


def _run(path, **kw):
    profile = get_profile("smoke")  # batches of 8: 10 images make two batches
    kw = {"attack": ATTACK, "protocol": "whole-model", "device": torch.device("cpu"), **kw}
    kw = {"n": 10, "draws": 3, "sanity": False, **kw}
    return evaluate_defense(path, profile, **kw)


def _stable(record):
    return {k: v for k, v in record.items() if k not in VOLATILE}


def test_killed_evaluation_resumes_to_identical_record(defense_path, monkeypatch):
    full, out = _run(defense_path)
    out.unlink()
    import atop_core.evaluation as evaluation

    real, calls = evaluation.save_progress, []

    def killed_after_one_batch(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(evaluation, "save_progress", killed_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        _run(defense_path)
    partial = json.loads(out.read_text())
    assert partial["complete"] is False and partial["n"] == 8
    monkeypatch.setattr(evaluation, "save_progress", real)
    resumed, _ = _run(defense_path)
    assert _stable(resumed) == _stable(full) and resumed["complete"] is True


def test_shards_merge_into_the_unsharded_record(defense_path, tmp_path):
    full, out = _run(defense_path)
    shards = [_run(defense_path, shard=(i, 2))[1] for i in range(2)]
    assert [json.loads(p.read_text())["n"] for p in shards] == [8, 2]
    out.unlink()
    assert merge_all(out.parents[2]) == [out]
    merged = json.loads(out.read_text())
    assert _stable(merged) == _stable(full) and merged["shards"] == 2


def test_a_record_of_another_run_in_the_same_file_is_refused(defense_path):
    _, out = _run(defense_path)
    record = json.loads(out.read_text())
    record["attack"]["steps"] = 7
    out.write_text(json.dumps(record))
    with pytest.raises(RecordMismatchError, match="differs in: attack"):
        _run(defense_path)


@pytest.mark.parametrize("text", ["2", "2/2", "a/b", "-1/3"])
def test_bad_shard_specs_are_refused(text):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)


def test_shards_cover_every_batch_exactly_once():
    parts = [shard_batches(1000, 64, (i, 3)) for i in range(3)]
    assert [b for p in parts for b in p] == list(range(16))


def test_clean_accuracy_is_computed_once_and_matches_either_protocol(defense_path, monkeypatch):
    import atop_core.evaluation as evaluation

    clean = AttackConfig(name="clean")
    copy, out = _run(defense_path, protocol="classifier-only", attack=clean)
    source = out.with_name(out.name.replace("classifier-only", "whole-model"))
    assert copy["protocol"] == "classifier-only" and copy["same_as"] == source.name
    assert json.loads(out.read_text()) == copy and source.exists()
    assert copy["per_sample"] == json.loads(source.read_text())["per_sample"]
    # the shortcut's premise: computed under classifier-only itself, the outcomes are the same
    monkeypatch.setattr(evaluation, "CLEAN_PROTOCOL", "classifier-only")
    out.unlink()
    direct, _ = _run(defense_path, protocol="classifier-only", attack=clean)
    assert "same_as" not in direct and direct["per_sample"] == copy["per_sample"]


def test_the_bare_classifier_check_attacks_every_record_image(defense_path):
    record, _ = _run(defense_path, sanity=True)
    assert record["n"] == 10 and record["sanity"]["bare_classifier"]["n"] == 10
    assert record["sanity"]["more_budget"]["passed"] is not None  # the rest: on sanity_n (8)


def test_frozen_randomness_is_its_own_record_with_one_draw_per_image(defense_path):
    fresh, fresh_out = _run(defense_path)
    frozen, frozen_out = _run(defense_path, randomness="frozen")
    assert frozen_out.name.endswith("__whole-model__frozen__n10.json") and frozen_out != fresh_out
    assert frozen["randomness"] == "frozen" and "randomness" not in fresh
    # one draw per image, shared by the attack and the judge: every draw agrees
    assert set(frozen["per_sample"]["correct_draws"]) <= {0, frozen["draws"]}
    assert frozen["accuracy"]["single"] == frozen["accuracy"]["worst"]
    with pytest.raises(ValueError, match="unknown randomness 'thawed'"):
        _run(defense_path, randomness="thawed")


def test_records_carry_the_attack_trace_and_every_indicator(defense_path):
    record, _ = _run(defense_path, sanity=True)
    assert [len(batch) for batch in record["trace"]["loss"]] == [ATTACK.steps + 1] * 2
    assert len(record["trace"]["fooled"]) == record["n"]
    assert set(record["indicators"]) == set(INDICATORS)
    for name, verdict in record["indicators"].items():
        assert verdict["fired"] in (True, False, None), name
        assert ("fix" in verdict) == bool(verdict["fired"]), name
