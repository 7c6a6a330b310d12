"""Model specs: what a spec is, how it is written and parsed, and its one canonical form.

A model spec is ``family:source``, ``family`` (the family's default source) or an alias
(``demo``: the bundled from-scratch OWLv2 model). Where the weights of ``source`` live
is decided by how it is WRITTEN, never by what happens to exist in the working
directory (the rule of timm's ``hf-hub:`` / ``local-dir:`` prefixes):

* ``family:hf-hub:org/name``   -> a Hugging Face hub id, always;
* ``family:local-dir:PATH``    -> a local directory, always (PATH may be relative);
* ``family:SOURCE`` (no prefix) -> a local directory when SOURCE is absolute or starts
  with ``./``, ``../`` or ``~`` (or is ``.`` / ``..``); anything else is a hub id.

So ``owlv2:org/name`` is the hub model ``org/name`` even when a folder ``org/name``
exists here; write ``owlv2:./org/name`` or ``owlv2:local-dir:org/name`` for the folder
(:func:`resedis.models.resolver.resolve_weights` says so when the hub has no such model).

The canonical form (:func:`canonical`, :func:`canonical_spec`) is what an index records:
a local directory made absolute (``owlv2:/abs/dir``), a hub id as written
(``owlv2:org/name``), the bundled model as its alias (``demo``), a bare family given its
default source. Canonical specs recorded by earlier versions (absolute paths, hub ids,
``demo``) parse to the same canonical form.

Families are registered in :data:`MODELS` (by :mod:`resedis.models`, which adds each
family's loader); parsing only needs their names and default sources.

>>> str(parse_spec("owlv2"))
'owlv2:google/owlv2-base-patch16-ensemble'
>>> parse_spec("owlv2:./runs/best").local, parse_spec("owlv2:org/name").local
(True, False)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from resedis.errors import ResedisError

DEFAULT_MODEL = "owlv2:google/owlv2-base-patch16-ensemble"
HUB_PREFIX = "hf-hub:"
LOCAL_PREFIX = "local-dir:"

# Kinds of backend (which Protocols of resedis.models.base the object implements).
REGION_TEXT = "region+text"  # RegionEncoder + TextEncoder (OWL family)
IMAGE_TEXT = "image-text"  # ImageTextEncoder (CLIP family)
GROUNDER = "grounder"  # Grounder
SEGMENTER = "segmenter"  # Segmenter


def demo_model_dir() -> Path:
    """Directory of the bundled demo model (an ``owlv2`` checkpoint + its checkpoint metadata)."""
    return Path(__file__).resolve().parent.parent / "assets" / "demo_model"


def is_local_source(source: str) -> bool:
    """The unprefixed rule: absolute, ``./``, ``../``, ``~`` (or ``.`` / ``..``) -> a local
    directory; anything else is a hub id. Pure: never looks at the file system."""
    return (
        source in (".", "..")
        or source.startswith(("./", "../", "~", ".\\", "..\\", "\\"))
        or os.path.isabs(source)
    )


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: ``family`` (registry key), ``source`` (hub id or local dir) and
    ``local`` (True: a local directory; False: a hub id; None on construction -> the
    unprefixed rule of :func:`is_local_source`).

    ``alias``: the registered short name this spec was written as (``demo``: the bundled
    model); it is what ``str()`` gives, so an index records ``demo`` and still finds the
    model after the package moves. ``str()`` of any other spec re-parses to the same spec.
    """

    family: str
    source: str
    alias: str | None = None
    local: bool | None = None

    def __post_init__(self) -> None:
        if self.local is None:
            object.__setattr__(self, "local", is_local_source(self.source))

    def __str__(self) -> str:
        if self.alias:
            return self.alias
        if self.local and not is_local_source(self.source):
            return f"{self.family}:{LOCAL_PREFIX}{self.source}"
        if not self.local and is_local_source(self.source):
            return f"{self.family}:{HUB_PREFIX}{self.source}"
        return f"{self.family}:{self.source}"


Factory = Callable[[ModelSpec, Any, Any], Any]


@dataclass(frozen=True)
class ModelEntry:
    """One supported model family.

    ``factory(spec, device, dtype)`` loads the backend (``device`` is a resolved
    ``torch.device``; ``dtype`` a ``torch.dtype`` or None for float32).
    """

    name: str
    kind: str
    default_source: str
    description: str
    factory: Factory


#: ``family -> ModelEntry``; :mod:`resedis.models` registers the built-in families.
MODELS: dict[str, ModelEntry] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    """Add (or replace) a family in :data:`MODELS`."""
    MODELS[entry.name] = entry
    return entry


def list_models() -> list[ModelEntry]:
    """Supported families, in registration order."""
    return list(MODELS.values())


def _demo_spec() -> ModelSpec:
    return ModelSpec("owlv2", str(demo_model_dir()), alias="demo", local=True)


#: Short names for whole specs, resolved offline when parsed (``name -> (description,
#: builder)``). ``demo``: the bundled from-scratch OWLv2 model (``resedis demo``).
ALIASES: dict[str, tuple[str, Callable[[], ModelSpec]]] = {
    "demo": ("the bundled from-scratch OWLv2 demo model (owlv2:<package>/assets/demo_model), offline", _demo_spec),
}


def list_aliases() -> dict[str, str]:
    """``{alias: what it resolves to}`` (e.g. ``{"demo": "owlv2:/.../assets/demo_model"}``)."""
    specs = {name: build() for name, (_, build) in ALIASES.items()}
    return {name: f"{s.family}:{s.source}" for name, s in specs.items()}


def parse_spec(spec: str | ModelSpec) -> ModelSpec:
    """``"family:source"``, ``"family"`` or an alias (``"demo"``) -> :class:`ModelSpec`.

    The family must be registered; a bare family uses its default source. Only the first
    ``:`` splits, so sources may contain colons. ``hf-hub:`` / ``local-dir:`` before the
    source force a hub id / a local directory (module docstring). An alias resolves to its
    full spec and keeps its name (``str(parse_spec("demo")) == "demo"``). A ModelSpec is
    returned unchanged.
    """
    if isinstance(spec, ModelSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ResedisError(f"empty model spec; expected family:source, e.g. {DEFAULT_MODEL}")
    spec = spec.strip()
    family, sep, source = spec.partition(":")
    family = family.strip().lower()
    if family in ALIASES and family not in MODELS:
        if sep:
            raise ResedisError(f"model spec {spec!r}: {family!r} names one bundled model and takes no ':source'; "
                               f"write just {family!r}")
        return ALIASES[family][1]()
    if family not in MODELS:
        known = ", ".join(MODELS) + "; or " + ", ".join(ALIASES)
        hint = (
            f" (did you mean owlv2:{spec}?)" if not sep and ("/" in spec or "\\" in spec) else ""
        )
        raise ResedisError(f"unknown model family {family!r} in spec {spec!r}; supported: {known}{hint}")
    source = source.strip() if sep else ""
    local: bool | None = None
    for prefix, is_local in ((HUB_PREFIX, False), (LOCAL_PREFIX, True)):
        if source.startswith(prefix):
            source, local = source[len(prefix):].strip(), is_local
            if not source:
                raise ResedisError(f"model spec {spec!r}: nothing after {prefix!r}; e.g. "
                                   f"{family}:{prefix}{'org/name' if not is_local else 'path/to/dir'}")
    if not source:
        source = MODELS[family].default_source
    return ModelSpec(family, source, local=local)


def canonical(spec: ModelSpec) -> ModelSpec:
    """Local sources become absolute paths, so a spec recorded in an index means one thing;
    a directory that is an alias's (the bundled demo model's) becomes that alias, so the
    recorded spec (``demo``) survives the package moving. Hub ids stay as written."""
    if spec.alias is not None or not spec.local:
        return spec
    path = Path(spec.source).expanduser().resolve()
    for _, build in ALIASES.values():
        target = build()
        if target.family == spec.family and Path(target.source).resolve() == path:
            return target
    return ModelSpec(spec.family, str(path), local=True)


def canonical_spec(spec: str | ModelSpec) -> str:
    """The spec's one spelling (for recording and comparison): ``str(canonical(parse_spec(spec)))``."""
    return str(canonical(parse_spec(spec)))


__all__ = [
    "ALIASES",
    "DEFAULT_MODEL",
    "GROUNDER",
    "HUB_PREFIX",
    "IMAGE_TEXT",
    "LOCAL_PREFIX",
    "MODELS",
    "ModelEntry",
    "ModelSpec",
    "REGION_TEXT",
    "SEGMENTER",
    "canonical",
    "canonical_spec",
    "demo_model_dir",
    "is_local_source",
    "list_aliases",
    "list_models",
    "parse_spec",
    "register_model",
]
