"""Filters on image metadata: which indexed images a query may return.

A :class:`Filters` restricts a query to the images whose row in the index's ``images``
table (:func:`resedis.index.store.images_schema`) passes every given condition:

* ``folder``: the image id (the POSIX path relative to the indexed folder) lies in this
  folder or below (``"2024/trips"`` keeps ``2024/trips/a.jpg`` and
  ``2024/trips/rome/b.jpg``, not ``2024/trips-old/c.jpg``);
* ``min_width`` / ``max_width`` / ``min_height`` / ``max_height``: the image size in
  pixels (EXIF-rotated, as indexed), bounds inclusive;
* ``modified_after`` / ``modified_before``: the file's modification time as indexed
  (``mtime_ns``); ``after`` is inclusive, ``before`` exclusive. ISO 8601 text
  (``2024-05-01`` or ``2024-05-01T12:30:00``; without a zone it is UTC), a
  :class:`datetime.datetime` / :class:`datetime.date`, or POSIX seconds;
* ``image_ids``: an explicit set of image ids.

Filters act on the region matrix *before* ranking (the regions of other images get the
logit ``-inf``), so the top-k of a filtered query are the best matching regions among
the allowed images, never a cut of an unfiltered top-k: filtered results equal the
unfiltered ranking restricted to the filter. The ANN path honours them too
(:meth:`resedis.index.ann_search.AnnSearch.candidates`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields, replace
import numpy as np

from resedis.errors import ResedisError

_UTC = dt.timezone.utc


def parse_time(value, name: str) -> int:
    """An ISO date/datetime text, a date/datetime or POSIX seconds -> nanoseconds since the
    epoch (UTC when no zone is given). ``name`` names the option in the error."""
    if isinstance(value, bool):
        raise ResedisError(f"{name}: expected an ISO date such as 2024-05-01, got {value!r}")
    if isinstance(value, (int, float)):
        return int(round(float(value) * 1e9))
    if isinstance(value, str):
        text = value.strip()
        try:
            value = dt.datetime.fromisoformat(text.replace("Z", "+00:00")) if "T" in text or " " in text or ":" in text \
                else dt.date.fromisoformat(text)
        except ValueError:
            raise ResedisError(f"{name}: {value!r} is not an ISO date or date-time; write e.g. 2024-05-01 or "
                               "2024-05-01T12:30:00 (UTC unless a zone such as +02:00 is given)") from None
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=_UTC)
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day, tzinfo=_UTC)
    else:
        raise ResedisError(f"{name}: expected an ISO date, a datetime or POSIX seconds, got {type(value).__name__}")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)


def _format(moment) -> str:
    if isinstance(moment, dt.datetime) and moment.tzinfo is not None:
        return moment.astimezone(_UTC).isoformat().replace("+00:00", "Z")
    return str(moment)


def clean_folder(folder: str) -> str:
    """A folder prefix in image-id form: POSIX separators, no leading ``./`` or ``/``, no
    trailing ``/`` (``""`` = the whole index)."""
    text = str(folder).replace("\\", "/").strip()
    while text.startswith("./"):
        text = text[2:]
    text = text.strip("/")
    if text in (".", ""):
        return ""
    if any(part in ("..", ".") for part in text.split("/")):
        raise ResedisError(f"folder {folder!r}: give a folder relative to the indexed folder, as in image ids, "
                           "without '.' or '..' segments")
    return text


@dataclass(frozen=True)
class Filters:
    """Conditions on image metadata (see the module docstring); None = not filtered on.
    Build it directly and call :meth:`validated`, or let :class:`resedis.query.QueryEngine`
    do it. ``image_ids`` is stored as a sorted tuple so a Filters is hashable."""

    folder: str | None = None
    min_width: int | None = None
    max_width: int | None = None
    min_height: int | None = None
    max_height: int | None = None
    modified_after: object = None
    modified_before: object = None
    image_ids: tuple[str, ...] | None = None

    def validated(self) -> Filters:
        """A checked, normalised copy (times as UTC datetimes, folder cleaned, ids a sorted tuple);
        ResedisError naming the bad value otherwise."""
        changes: dict = {}
        if self.folder is not None:
            if not isinstance(self.folder, str):
                raise ResedisError(f"folder must be text (a folder relative to the indexed folder), got {self.folder!r}")
            changes["folder"] = clean_folder(self.folder)
        for name in ("min_width", "max_width", "min_height", "max_height"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ResedisError(f"{name} must be a whole number of pixels >= 0, got {value!r}")
            changes[name] = int(value)
        for low, high in (("min_width", "max_width"), ("min_height", "max_height")):
            a, b = changes.get(low), changes.get(high)
            if a is not None and b is not None and a > b:
                raise ResedisError(f"{low} ({a}) is larger than {high} ({b}): no image can match")
        for name in ("modified_after", "modified_before"):
            value = getattr(self, name)
            if value is not None:  # kept as an aware datetime, so validating twice changes nothing
                ns = parse_time(value, name)
                changes[name] = _EPOCH + dt.timedelta(microseconds=ns // 1000)
        after, before = changes.get("modified_after"), changes.get("modified_before")
        if after is not None and before is not None and after >= before:
            raise ResedisError(f"modified_after ({_format(after)}) is not before modified_before "
                               f"({_format(before)}): no image can match")
        if self.image_ids is not None:
            if isinstance(self.image_ids, str):
                raise ResedisError("image_ids is a list of image ids, not one string")
            ids = sorted({str(i) for i in self.image_ids})
            if not ids:
                raise ResedisError("image_ids is empty: give at least one image id, or None to search every image")
            changes["image_ids"] = tuple(ids)
        return replace(self, **changes)

    @property
    def active(self) -> bool:
        """True when at least one condition is set."""
        return bool(self.folder) or any(getattr(self, f.name) is not None for f in fields(self) if f.name != "folder")

    def describe(self) -> str:
        """The conditions in words (for notes and logs)."""
        parts = []
        if self.folder:
            parts.append(f"folder {self.folder}/")
        for name, op in (("min_width", "width >="), ("max_width", "width <="), ("min_height", "height >="),
                         ("max_height", "height <=")):
            if getattr(self, name) is not None:
                parts.append(f"{op} {getattr(self, name)}")
        for name, op in (("modified_after", "modified >="), ("modified_before", "modified <")):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{op} {_format(value)}")
        if self.image_ids is not None:
            parts.append(f"{len(self.image_ids)} listed image id{'s' if len(self.image_ids) != 1 else ''}")
        return ", ".join(parts) or "no filter"

    def image_mask(self, meta: ImageMeta) -> np.ndarray:
        """(I,) bool: the image rows of ``meta`` that pass (call on a :meth:`validated` copy)."""
        keep = np.ones(len(meta.image_ids), dtype=bool)
        if self.folder:
            prefix = self.folder + "/"
            keep &= np.fromiter((i.startswith(prefix) for i in meta.image_ids), bool, len(meta.image_ids))
        for name, column, op in (("min_width", meta.widths, np.greater_equal), ("max_width", meta.widths, np.less_equal),
                                 ("min_height", meta.heights, np.greater_equal),
                                 ("max_height", meta.heights, np.less_equal),
                                 ("modified_after", meta.mtime_ns, np.greater_equal),
                                 ("modified_before", meta.mtime_ns, np.less)):
            value = getattr(self, name)
            if value is not None:
                if name.startswith("modified"):
                    value = parse_time(value, name)
                keep &= op(column, value)
        if self.image_ids is not None:
            wanted = set(self.image_ids)
            keep &= np.fromiter((i in wanted for i in meta.image_ids), bool, len(meta.image_ids))
        return keep


@dataclass
class ImageMeta:
    """Per image row of a :class:`resedis.search_corpus.Corpus`: id, size and mtime."""

    image_ids: list[str]
    widths: np.ndarray
    heights: np.ndarray
    mtime_ns: np.ndarray


def image_meta(table, image_ids: list[str]) -> ImageMeta:
    """The ``images`` rows (an Arrow table with image_id, width, height, mtime_ns) aligned
    with ``image_ids`` (a corpus's image rows)."""
    rows = {i: k for k, i in enumerate(table["image_id"].to_pylist())}
    order = np.array([rows[i] for i in image_ids], dtype=np.int64)

    def col(name: str) -> np.ndarray:
        return table[name].to_numpy(zero_copy_only=False).astype(np.int64)[order] if len(order) else np.zeros(0, np.int64)

    return ImageMeta(list(image_ids), col("width"), col("height"), col("mtime_ns"))


def read_ids_file(path) -> tuple[str, ...]:
    """Image ids from a text file, one a line (blank lines and ``#`` comments skipped)."""
    try:
        with open(path, encoding="utf-8") as fh:
            ids = [line.strip() for line in fh]
    except OSError as exc:
        raise ResedisError(f"cannot read the ids file {path}: {exc.strerror or exc}") from None
    ids = [i for i in ids if i and not i.startswith("#")]
    if not ids:
        raise ResedisError(f"the ids file {path} lists no image id (one id a line)")
    return tuple(ids)


def filters_from(values: dict) -> Filters | None:
    """A Filters from keyword values (None ones dropped), or None when none is given."""
    given = {k: v for k, v in values.items() if v is not None}
    return Filters(**given) if given else None


__all__ = ["Filters", "ImageMeta", "clean_folder", "filters_from", "image_meta", "parse_time", "read_ids_file"]
