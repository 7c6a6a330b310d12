"""The fine-tuning rejection-collapse rule (resedis.finetune.rejection) on hand tables."""

from __future__ import annotations

import pytest

from resedis.finetune.rejection import COLLAPSE_DROP, rejection_summary


@pytest.mark.parametrize("before, after, collapsed, n_reasons", [
    ({"N_acc": 0.8, "IL_MCC": 0.5}, {"N_acc": 0.7, "IL_MCC": 0.45}, False, 0),   # small drops
    ({"N_acc": 0.8, "IL_MCC": 0.5}, {"N_acc": 0.5, "IL_MCC": 0.45}, True, 1),    # N_acc -0.30
    ({"N_acc": 0.2, "IL_MCC": 0.5}, {"N_acc": 0.0, "IL_MCC": 0.5}, True, 1),     # N_acc to 0
    ({"N_acc": 0.8, "IL_MCC": 0.1}, {"N_acc": 0.8, "IL_MCC": -0.05}, True, 1),   # IL_MCC to <= 0
    ({"N_acc": 0.8, "IL_MCC": 0.6}, {"N_acc": 0.2, "IL_MCC": 0.3}, True, 2),     # both
    ({"N_acc": None, "IL_MCC": 0.6}, {"N_acc": None, "IL_MCC": 0.5}, False, 0),  # no absent queries
    ({"N_acc": 0.0, "IL_MCC": 0.0}, {"N_acc": 0.0, "IL_MCC": 0.0}, False, 0),    # nothing to lose
    ({"N_acc": 0.5, "IL_MCC": 0.4}, {"N_acc": 0.9, "IL_MCC": 0.7}, False, 0),    # improvement
])
def test_collapse_table(before, after, collapsed, n_reasons):
    s = rejection_summary(before, after)
    assert s["collapsed"] is collapsed and len(s["reasons"]) == n_reasons
    assert s["before"] == before and s["after"] == after and s["collapse_drop"] == COLLAPSE_DROP


def test_exact_drop_is_a_collapse():
    assert rejection_summary({"N_acc": 0.75, "IL_MCC": None}, {"N_acc": 0.5, "IL_MCC": None})["collapsed"]
