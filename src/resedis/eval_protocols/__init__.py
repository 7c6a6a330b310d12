"""Evaluation protocols of other benchmarks, as pure functions over resedis records.

Each module reproduces one published protocol on :class:`resedis.types.Query` targets and
:class:`resedis.types.Hit` detections (boxes xyxy in absolute pixels, masks COCO RLE):

* :mod:`resedis.eval_protocols.saco`  — SAM 3's SA-Co presence metrics IL_MCC, pmF1, cgF1;
* :mod:`resedis.eval_protocols.d3`    — D³ (Description Detection) COCO mAP, description = category;
* :mod:`resedis.eval_protocols.suite` — the ``--protocol`` registry used by ``resedis eval``.

The package is core-level: it imports only ``types``, ``masks`` and ``metrics``; the
``saco`` module imports nothing from ``metrics`` because ``metrics`` uses it.
"""
