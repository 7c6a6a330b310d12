"""The ``--protocol`` registry: which metric set ``resedis eval`` reports.

* ``resedis`` — the default suite of :mod:`resedis.metrics` (DESIGN.md §5), which already
  includes IL_MCC / pmF1 / cgF1;
* ``d3``   — :func:`resedis.eval_protocols.d3.d3_metrics`, inter-scenario always and
  intra-scenario when the queries carry a ``scope`` (the D³ loader sets it);
* ``grec`` — :func:`resedis.eval_protocols.grec.grec_metrics`;
* ``reir`` — :func:`resedis.eval_protocols.reir.reir_metrics`;
* ``saco`` — every SA-Co number of :func:`resedis.eval_protocols.saco.presence_scores`
  over all (query, corpus image) pairs.

Example::

    >>> protocol_metrics("grec", ds.queries, results, ds.images)["N_acc"]   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from resedis import metrics
from resedis.eval_protocols.d3 import d3_metrics
from resedis.eval_protocols.grec import grec_metrics
from resedis.eval_protocols.reir import reir_metrics
from resedis.eval_protocols.saco import from_records, presence_scores
from resedis.types import Hit, ImageId, ImageInfo, Query

PROTOCOLS = ("resedis", "d3", "grec", "reir", "saco")
DEFAULT_PROTOCOL = "resedis"


def protocol_metrics(
    protocol: str, queries: Sequence[Query], results: Mapping[str, Sequence[Hit]],
    images: Mapping[ImageId, ImageInfo], *, iou: str = "box",
) -> dict[str, Any]:
    """The metric dict of one protocol (see the module doc). ``results``: query id -> hits."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if protocol == "resedis":
        return metrics.evaluate(queries, results, iou=iou, n_images=len(images))
    if protocol == "d3":
        out = {"inter": d3_metrics(queries, results, images, setting="inter")}
        if any(q.scope is not None for q in queries):
            out["intra"] = d3_metrics(queries, results, images, setting="intra")
        return out
    if protocol == "grec":
        return grec_metrics(queries, results)
    if protocol == "reir":
        return reir_metrics(queries, results)
    records = metrics.per_query(queries, results, iou=iou, n_images=len(images))
    return presence_scores(from_records(records))


def format_protocol_table(protocol: str, m: Mapping[str, Any]) -> str:
    """Plain-text lines for the terminal (the ``resedis`` suite has its own table)."""

    def fmt(v: Any) -> str:
        return "n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    if protocol == "d3":
        lines = []
        for setting, block in m.items():
            for part in ("FULL", "PRES", "ABS"):
                if part in block:
                    b = block[part]
                    lines.append(f"D³ {setting:<5} {part:<4}  mAP {fmt(b['mAP'])}  AP50 {fmt(b['AP50'])}  AP75 {fmt(b['AP75'])}")
        return "\n".join(lines)
    return "\n".join(f"{k:<20} {fmt(v)}" for k, v in m.items())
