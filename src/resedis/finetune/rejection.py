"""Does fine-tuning keep the rejection of absent queries?

Fine-tuned open-vocabulary detectors are reported to lose their ability to say "not
here": after training on positive phrases, every query finds *something*. ``resedis
finetune`` therefore scores the validation split before the first step and after the
last epoch, and compares two numbers at each point's fitted presence threshold:

* ``N_acc`` — the share of absent queries for which nothing is decided present;
* ``IL_MCC`` — SA-Co's image-level presence correlation over all (query, image) pairs.

**Collapse** (a warning, not an error) is declared when either

* N_acc falls by at least :data:`COLLAPSE_DROP` (0.25, absolute), or falls to 0 from a
  positive value; or
* IL_MCC falls by at least :data:`COLLAPSE_DROP`, or to ≤ 0 from a positive value.

N_acc needs absent queries in the validation split; without them only IL_MCC is judged.
"""

from __future__ import annotations

from typing import Any, Mapping

REJECTION_KEYS = ("N_acc", "IL_MCC")
COLLAPSE_DROP = 0.25


def _fell(before: float | None, after: float | None, floor: float) -> bool:
    if before is None or after is None:
        return False
    return before - after >= COLLAPSE_DROP or (before > floor and after <= floor)


def rejection_summary(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """``{"before": {N_acc, IL_MCC}, "after": {...}, "collapsed": bool, "reasons": [str]}``
    from two metric dicts (validation metrics before and after training)."""
    b = {k: before.get(k) for k in REJECTION_KEYS}
    a = {k: after.get(k) for k in REJECTION_KEYS}
    reasons = []
    if _fell(b["N_acc"], a["N_acc"], 0.0):
        reasons.append(f"N_acc (absent queries rejected) fell from {b['N_acc']:.3f} to {a['N_acc']:.3f}")
    if _fell(b["IL_MCC"], a["IL_MCC"], 0.0):
        reasons.append(f"IL_MCC (image-level presence) fell from {b['IL_MCC']:.3f} to {a['IL_MCC']:.3f}")
    return {"before": b, "after": a, "collapsed": bool(reasons), "reasons": reasons,
            "collapse_drop": COLLAPSE_DROP}
