"""Symlinks in the indexed folder: links leaving it are recorded as skips unless
``--follow-symlinks``; links inside it are indexed, each file once; loops end.

The walk is checked on its own (no model), then end to end through ``resedis index`` /
``resedis stats`` with the tiny random OWLv2 checkpoint (``tiny_models``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from resedis.cli import main as cli_main
from resedis.index import IndexConfig, build_index, open_index
from resedis.io.images import discover_images, walk_images

pytestmark = pytest.mark.timeout(300)  # a walk that loops must fail, not hang


def _image(path: Path, colour: tuple[int, int, int], size=(40, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def build_tree(tmp_path: Path) -> tuple[Path, Path]:
    """root/ with real images, inside links, outside links (file and folder) and loops;
    outside/ next to it. Returns (root, outside)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    _image(root / "a.png", (200, 30, 30))
    _image(root / "sub" / "b.jpg", (30, 200, 30), (48, 40))
    _image(root / ".store" / "c.png", (30, 30, 200))  # hidden: reached only through a link
    _image(outside / "o.png", (200, 200, 30))
    _image(outside / "pics" / "e.png", (30, 200, 200), (36, 36))
    (root / "a_again.png").symlink_to("a.png")  # inside, same file as a.png
    (root / "sub" / "b_alias.jpg").symlink_to(root / "sub" / "b.jpg")  # inside, absolute target
    (root / "c_link.png").symlink_to(".store/c.png")  # inside, the only route to c.png
    (root / "o_link.png").symlink_to(outside / "o.png")  # leaves the root
    (root / "ext").symlink_to(outside / "pics", target_is_directory=True)  # folder leaving the root
    (root / "sub" / "up").symlink_to("..", target_is_directory=True)  # folder cycle inside the root
    (root / "self.png").symlink_to("self.png")  # a link to itself
    (outside / "pics" / "around").symlink_to(outside / "pics", target_is_directory=True)  # cycle outside
    (outside / "pics" / "home").symlink_to(root, target_is_directory=True)  # back into the root
    return root, outside


def rels(paths, root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


def test_walk_refuses_links_leaving_the_root_and_indexes_each_file_once(tmp_path):
    root, outside = build_tree(tmp_path)
    walk = walk_images(root)
    assert rels(walk.files, root) == ["a.png", "c_link.png", "sub/b.jpg"]
    reasons = dict(zip(rels([p for p, _ in walk.refused], root), (r for _, r in walk.refused)))
    assert sorted(reasons) == ["a_again.png", "ext", "o_link.png", "self.png", "sub/b_alias.jpg"]
    assert "outside" in reasons["o_link.png"] and str(outside / "o.png") in reasons["o_link.png"]
    assert "--follow-symlinks" in reasons["o_link.png"]
    assert "symlinked folder" in reasons["ext"] and "--follow-symlinks" in reasons["ext"]
    assert reasons["a_again.png"].startswith("same file as a.png")
    assert reasons["sub/b_alias.jpg"].startswith("same file as sub/b.jpg")
    assert "loop" in reasons["self.png"]
    assert discover_images(root) == walk.files


def test_walk_with_follow_symlinks_enters_outside_folders_once(tmp_path):
    root, outside = build_tree(tmp_path)
    walk = walk_images(root, follow_symlinks=True)
    # ext/ is walked once: its 'around' cycle and its 'home' link back into the root are not entered
    assert rels(walk.files, root) == ["a.png", "c_link.png", "ext/e.png", "o_link.png", "sub/b.jpg"]
    assert rels([p for p, _ in walk.refused], root) == ["a_again.png", "self.png", "sub/b_alias.jpg"]
    # a second outside route to o.png: indexed once, under the first path in sorted order
    (root / "zz_o.png").symlink_to(outside / "o.png")
    walk = walk_images(root, follow_symlinks=True)
    assert "zz_o.png" not in rels(walk.files, root)
    assert dict((p.name, r) for p, r in walk.refused)["zz_o.png"].startswith("same file as o_link.png")


def test_walk_excludes_a_database_reached_through_a_link(tmp_path):
    root, _ = build_tree(tmp_path)
    _image(root / "db" / "inside.png", (1, 2, 3))
    (root / "db_link").symlink_to(root / "db", target_is_directory=True)
    assert "db/inside.png" not in rels(walk_images(root, exclude=[root / "db"]).files, root)
    assert not any("db" in f for f in rels(walk_images(root, exclude=[root / "db"], follow_symlinks=True).files, root))


def _indexed(db: Path) -> list[str]:
    return sorted(open_index(db).read("images", ["image_id"]).to_pydict()["image_id"])


def _skips(db: Path) -> dict[str, str]:
    return {Path(s.source).name: s.reason for s in open_index(db).skipped()}


def test_index_cli_skips_outside_links_and_follow_symlinks_indexes_them(tmp_path, owlv2_spec, capsys):
    root, outside = build_tree(tmp_path)
    db = tmp_path / "db"
    base = ["index", str(root), "--db", str(db), "--model", owlv2_spec, "--device", "cpu", "--quiet", "--json"]
    assert cli_main(base) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["added"] == 3 and report["new_skipped"] == 5
    assert _indexed(db) == ["a.png", "c_link.png", "sub/b.jpg"]
    rows = open_index(db).read("images", ["image_id", "path"]).to_pydict()
    paths = dict(zip(rows["image_id"], rows["path"]))
    assert paths["c_link.png"] == str((root / ".store" / "c.png").resolve())  # the file the link reaches
    skips = _skips(db)
    assert set(skips) == {"a_again.png", "b_alias.jpg", "ext", "o_link.png", "self.png"}
    assert "outside" in skips["o_link.png"] and "--follow-symlinks" in skips["o_link.png"]

    assert cli_main(["stats", "--db", str(db)]) == 0  # the skip and its reason are visible in stats
    stats = capsys.readouterr().out
    assert f"{root / 'o_link.png'}: symlink leading outside" in stats and "skipped        5" in stats

    # unchanged rerun: nothing new recorded, nothing re-read
    assert cli_main(base) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["added"] == 0 and again["new_skipped"] == 0 and again["unchanged"] == 3

    # --follow-symlinks: the outside file and folder are indexed; their skip records go
    assert cli_main(base + ["--follow-symlinks"]) == 0
    followed = json.loads(capsys.readouterr().out)
    assert followed["added"] == 2 and followed["unchanged"] == 3
    assert _indexed(db) == ["a.png", "c_link.png", "ext/e.png", "o_link.png", "sub/b.jpg"]
    assert set(_skips(db)) == {"a_again.png", "b_alias.jpg", "self.png"}
    e_regions = open_index(db).read("regions", ["image_id"]).to_pydict()["image_id"].count("ext/e.png")
    assert e_regions > 0

    # back to the default: the outside images leave the index and are skips again
    assert cli_main(base) == 0
    back = json.loads(capsys.readouterr().out)
    assert back["removed"] == 2 and back["new_skipped"] == 2  # o_link.png, ext/e.png; o_link.png and ext recorded
    assert _indexed(db) == ["a.png", "c_link.png", "sub/b.jpg"]
    assert set(_skips(db)) == {"a_again.png", "b_alias.jpg", "ext", "o_link.png", "self.png"}
    assert "ext/e.png" not in open_index(db).read("regions", ["image_id"]).to_pydict()["image_id"]


def test_link_added_later_to_an_indexed_file_is_not_indexed_twice(tmp_path, owlv2_spec):
    root = tmp_path / "root"
    _image(root / "one.png", (10, 120, 10))
    _image(root / "two.png", (120, 10, 10))
    db = tmp_path / "db"
    config = IndexConfig(model=owlv2_spec, device="cpu")
    first = build_index(root, db, config=config, progress=False)
    assert first.added == 2 and not first.skipped
    (root / "deeper").mkdir()
    (root / "deeper" / "one_again.png").symlink_to(root / "one.png")
    (root / "loop").symlink_to(root, target_is_directory=True)
    second = build_index(root, db, config=config, progress=False)
    assert second.added == 0 and second.unchanged == 2 and second.new_skipped == 1
    assert _indexed(db) == ["one.png", "two.png"]
    assert _skips(db) == {"one_again.png": "same file as one.png (another route through a symlink): indexed once, "
                                           "as one.png"}
