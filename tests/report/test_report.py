"""resedis.report: the self-contained HTML report, its plots and thumbnails."""

from __future__ import annotations

import base64
import io
import itertools
import re
from html import escape

import numpy as np
import pytest
from evalkit import make_dataset, oracle
from PIL import Image

from resedis.eval import evaluate_predictions
from resedis.report import write_report
from resedis.report import analysis, svg
from resedis.report.gallery import FP_COLOR, GT_COLOR, TP_COLOR, DrawnBox, render_thumbnail
from resedis.types import Hit, ImageInfo, QueryResult

DATA_URI = re.compile(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"')


def _decode(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert img.format == "JPEG"
    return img.convert("RGB")


def _preds(ds):
    """Right on q_attr, a false alarm first on q_pos, and a false alarm on the absent query."""
    q = {x.query_id: x for x in ds.queries}
    out = oracle(ds)
    out[1].hits.insert(0, Hit(3, (5, 5, 50, 50), 2.0, True))
    out[4].hits.append(Hit(2, (0, 0, 40, 40), 0.7, True))
    out.append(QueryResult("ghost", "unknown query", []))
    assert q["q_none"].is_absent
    return out


def test_report_is_self_contained_and_shows_everything(tmp_path):
    ds = make_dataset(tmp_path)
    preds = _preds(ds)
    ev = evaluate_predictions(ds, preds)
    path = write_report(tmp_path / "r" / "report.html", ds, preds, ev, title="My <run>")
    html = path.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert html.count("<svg") == 2 and html.count("</svg>") == 2
    # nothing fetched from elsewhere
    assert not re.search(r'(src|href)="(?!data:)', html)
    # metric values, each expression type, escaped title and expressions, warnings
    m = ev.metrics
    for key in ("IR@1", "mAP50", "F1", "FA_per_query"):
        assert f"{m[key]:.4f}" in html, key
    for t in ("attribute", "position", "relation", "absent"):
        assert f'<td class="l">{t}</td>' in html, t
    assert "<title>My &lt;run&gt;</title>" in html
    assert "<b>blue</b>" not in html and escape("the square above the <b>blue</b> & star") in html
    assert "ghost" in html and "Warnings" in html
    # every thumbnail is a real JPEG no larger than 320 px
    thumbs = DATA_URI.findall(html)
    assert thumbs
    for b64 in thumbs:
        assert max(_decode(b64).size) <= 320


def test_gallery_caps_and_file_size(tmp_path):
    ds = make_dataset(tmp_path)
    # 60 queries copied from the five (distinct ids), all with predictions
    base = list(ds.queries)
    ds.queries = [
        type(q)(f"{q.query_id}_{i}", f"{q.expression} {i}", q.instances, q.category, q.type)
        for i, q in itertools.product(range(12), base)
    ]
    preds = oracle(ds)
    ev = evaluate_predictions(ds, preds)
    html = write_report(tmp_path / "big.html", ds, preds, ev, gallery_size=4).read_text()
    n_cards = html.count('<div class="q">')
    assert n_cards == 4 + 4 + 2  # best, worst, absent (n // 2)
    assert len(DATA_URI.findall(html)) <= n_cards * 4
    assert len(html) < 1_000_000


def test_missing_image_file_gets_a_placeholder(tmp_path):
    ds = make_dataset(tmp_path, write_images=False)
    preds = oracle(ds)
    ev = evaluate_predictions(ds, preds)
    html = write_report(tmp_path / "r.html", ds, preds, ev).read_text()
    assert DATA_URI.findall(html)


def test_thumbnail_draws_tp_fp_and_ground_truth(tmp_path):
    w, h = 640, 480
    Image.new("RGB", (w, h), (128, 128, 128)).save(tmp_path / "a.jpg", quality=95)
    info = ImageInfo(1, "a.jpg", w, h, str(tmp_path / "a.jpg"))
    ds = make_dataset(tmp_path)  # for an Instance with a real mask in another image size
    from resedis.masks import encode_mask, rle_to_box
    from resedis.types import Instance

    mask = np.zeros((h, w), bool)
    mask[240:400, 320:600] = True
    rle = encode_mask(mask)
    target = Instance(1, rle, rle_to_box(rle))
    boxes = [DrawnBox((40, 40, 200, 200), True, True, "#1 0.90"), DrawnBox((400, 20, 600, 120), False, True, "#2")]
    img = _decode(render_thumbnail(info, [target], boxes, max_side=320)[len("data:image/jpeg;base64,"):])
    assert img.size == (320, 240)
    arr = np.asarray(img).astype(int)

    def near(px, color, tol=60):
        return np.abs(arr[px[1], px[0]] - np.array(color)).sum() < tol

    # thumbnail = original / 2: TP box (20, 20, 100, 100), FP box (200, 10, 300, 60)
    assert near((21, 60), TP_COLOR)  # left edge of the TP box
    assert near((250, 59), FP_COLOR)  # bottom edge of the false alarm
    assert near((230, 170), (np.array(GT_COLOR) * 0.45 + 128 * 0.55).astype(int))  # tinted mask interior
    assert near((60, 200), (128, 128, 128))  # untouched background
    assert ds.images  # the helper dataset is intact


def test_rank_auc_matches_brute_force():
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 5, 40).astype(float)
    neg = rng.integers(0, 5, 30).astype(float)
    brute = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg])
    assert analysis.rank_auc(pos, neg) == pytest.approx(brute)
    assert analysis.rank_auc(pos, np.zeros(0)) is None


def test_select_gallery_orders_and_separates(tmp_path):
    rows = [{"query_id": str(i), "absent": False, "AP50": ap, "BR@1@0.5": 0.0, "IR@1": 0.0}
            for i, ap in enumerate([0.2, 0.9, 0.5, 0.1, 0.7])]
    rows.append({"query_id": "x", "absent": True, "fa_images": 2, "n_decided": 3})
    best, worst, absent = analysis.select_gallery(rows, 2)
    assert [r["AP50"] for r in best] == [0.9, 0.7]
    assert [r["AP50"] for r in worst] == [0.1, 0.2]
    assert [r["query_id"] for r in absent] == ["x"]
    best, worst, _ = analysis.select_gallery(rows[:3], 5)  # too few: no query in both
    assert not {r["query_id"] for r in best} & {r["query_id"] for r in worst}
    assert len(best) + len(worst) == 3


def test_svg_plots_escape_and_scale():
    s = svg.line_chart("PR <x>", [svg.Series("a&b", [0, 0.5, 1], [1, 0.5, 0], "#000", step=True)],
                       xlabel="recall", ylabel="precision")
    assert s.startswith("<svg") and "PR &lt;x&gt;" in s and "a&amp;b" in s
    pts = re.search(r'points="([^"]+)"', s).group(1).split()
    assert len(pts) == 5  # 3 points + 2 step corners
    h = svg.histogram("h", [("t", [0.1, 0.2, 0.9], "#0a0"), ("o", [], "#a00")], bins=4)
    assert h.count("<rect") >= 3 and "n=3" in h and "n=0" in h
    assert "no detections" in svg.histogram("h", [("t", [], "#0a0")])


def test_write_report_validates_arguments(tmp_path):
    ds = make_dataset(tmp_path)
    ev = evaluate_predictions(ds, [])
    with pytest.raises(ValueError, match="thumb_size"):
        write_report(tmp_path / "x.html", ds, [], ev, thumb_size=1000)
