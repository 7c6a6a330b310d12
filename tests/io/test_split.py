"""``load_dataset(split=)`` and the ``--split`` option of eval / baseline / finetune, on the
tiny RefCOCO and gRefCOCO fixtures of test_io_refcoco.py / test_grefcoco.py."""

from __future__ import annotations

import json

import pytest
from test_grefcoco import make_grefcoco
from test_io_refcoco import make_refcoco

from resedis.baselines import oracle_predictions
from resedis.cli import main as cli_main
from resedis.errors import ResedisError
from resedis.io import load_dataset, read_predictions, write_predictions
from resedis.types import FormatError

# RefCOCO refs: image 100 in train (sentences 10, 11), image 200 in val (sentence 12)
REFCOCO_REFS = [
    {"ref_id": 0, "ann_id": 1, "image_id": 100, "split": "train", "category_id": 1,
     "sentences": [{"sent": "man on left", "sent_id": 10}, {"sent": "left guy", "sent_id": 11}]},
    {"ref_id": 1, "ann_id": 2, "image_id": 200, "split": "val", "category_id": 2,
     "sentences": [{"sent": "brown dog", "sent_id": 12}]},
]
# gRefCOCO (good_refs): val = sentences 10, 11 (image 100, two targets) and 13 (no target,
# image 300); train = 12 (image 200); testA = 14 (image 200); one val ref without sentences.
GREF_SPLITS = {"val": ["10", "11", "13"], "train": ["12"], "testA": ["14"]}


def test_refcoco_split_keeps_only_that_split(tmp_path):
    make_refcoco(tmp_path, refs=REFCOCO_REFS)
    root = tmp_path / "data"
    every = load_dataset(root)
    assert [q.query_id for q in every.queries] == ["10", "11", "12"] and set(every.images) == {100, 200, 300}
    val = load_dataset(root, split="val")
    assert [q.query_id for q in val.queries] == ["12"]
    assert set(val.images) == {200}  # the corpus shrinks to the split's images
    assert val.name == "refcoco(unc)-val"
    train = load_dataset(root, split="train")
    assert [q.query_id for q in train.queries] == ["10", "11"] and set(train.images) == {100}


@pytest.mark.parametrize("split", sorted(GREF_SPLITS))
def test_grefcoco_split_keeps_only_that_split(tmp_path, split):
    make_grefcoco(tmp_path)
    ds = load_dataset(tmp_path / "datasets", split=split)
    assert [q.query_id for q in ds.queries] == GREF_SPLITS[split]
    targets = {i for q in ds.queries for i in q.target_images}
    assert targets <= set(ds.images)
    if split == "val":
        assert set(ds.images) == {100, 300}  # the no-target ref's image is part of the corpus
        assert [q.is_absent for q in ds.queries] == [False, False, True]
        assert any("no sentences" in s.reason for s in ds.skipped)  # the empty val ref is still reported
    else:
        assert set(ds.images) == {200} and not ds.skipped  # the empty ref is val: not looked at


def test_unknown_split_lists_the_splits_of_the_file(tmp_path):
    make_refcoco(tmp_path, refs=REFCOCO_REFS)
    with pytest.raises(FormatError) as info:
        load_dataset(tmp_path / "data", split="test")
    assert info.value.field_name == "split" and info.value.source.endswith("refs(unc).p")
    assert "'test'" in str(info.value) and "train, val" in str(info.value)

    gdir = tmp_path / "g"
    make_grefcoco(gdir)
    with pytest.raises(FormatError) as info:
        load_dataset(gdir / "datasets", split="Val")  # case matters, as in the file
    assert info.value.source.endswith("grefs(unc).json")
    assert "testA, train, val" in str(info.value)


def test_split_on_a_resedis_format_dataset_is_an_error(synth_small):
    with pytest.raises(ResedisError, match="ReSeDis-format dataset.*no splits"):
        load_dataset(synth_small, split="val")
    with pytest.raises(ResedisError, match="no splits"):
        load_dataset(synth_small, format="resedis", split="val")
    assert len(load_dataset(synth_small).queries) == 30  # without a split it still loads


def test_cli_eval_split_end_to_end(tmp_path, capsys):
    make_grefcoco(tmp_path)
    root = tmp_path / "datasets"
    preds = tmp_path / "oracle_all.jsonl"
    write_predictions(preds, oracle_predictions(load_dataset(root)))  # every split's queries
    out_all, out_val = tmp_path / "all.json", tmp_path / "val.json"
    assert cli_main(["eval", "--dataset", str(root), "--predictions", str(preds), "--json", str(out_all)]) == 0
    capsys.readouterr()
    assert cli_main(["eval", "--dataset", str(root), "--split", "val", "--predictions", str(preds),
                     "--json", str(out_val)]) == 0
    captured = capsys.readouterr()
    assert "grefcoco(unc)-val" in captured.out
    m_all, m_val = json.loads(out_all.read_text()), json.loads(out_val.read_text())
    assert m_all["queries"] == 5 and m_all["absent_queries"] == 1
    assert m_val["queries"] == 3 and m_val["absent_queries"] == 1
    assert m_val["IR@1"] == pytest.approx(1.0) and m_val["N_acc"] == pytest.approx(1.0)
    assert set(m_val["breakdown"]["type"]) == {"multi-target", "no-target"}  # the single-target refs are train/testA
    # the other splits' prediction lines are reported, not scored
    warned = " ".join(m_val["warnings"])
    assert "12" in warned and "14" in warned and "not in the dataset" in warned

    code = cli_main(["eval", "--dataset", str(root), "--split", "tset", "--predictions", str(preds)])
    err = capsys.readouterr().err
    assert code == 2 and "'tset'" in err and "testA, train, val" in err


def test_cli_baseline_split_and_resedis_error(tmp_path, capsys, synth_small):
    make_refcoco(tmp_path, refs=REFCOCO_REFS)
    out = tmp_path / "oracle_train.jsonl"
    assert cli_main(["baseline", "oracle", "--dataset", str(tmp_path / "data"), "--split", "train", "--out", str(out)]) == 0
    assert sorted(r.query_id for r in read_predictions(out)) == ["10", "11"]
    capsys.readouterr()
    code = cli_main(["baseline", "oracle", "--dataset", str(synth_small), "--split", "val", "--out", str(tmp_path / "x.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "ReSeDis-format" in err and not (tmp_path / "x.jsonl").exists()


def test_cli_finetune_split_flags_are_checked_before_training(tmp_path, capsys, synth_small):
    make_grefcoco(tmp_path)
    base = ["finetune", "--model", "owlv2:/nonexistent", "--out", str(tmp_path / "run")]
    assert cli_main(base + ["--dataset", str(synth_small), "--split", "train"]) == 2
    assert "ReSeDis-format" in capsys.readouterr().err
    assert cli_main(base + ["--dataset", str(tmp_path / "datasets"), "--val-split", "val"]) == 2
    assert "--val-split needs --val-dataset" in capsys.readouterr().err
    assert cli_main(base + ["--dataset", str(tmp_path / "datasets"), "--split", "train",
                            "--val-dataset", str(tmp_path / "datasets"), "--val-split", "nope"]) == 2
    assert "'nope'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing trained or written
