"""Where an index lives: a local directory or an object-store URI.

An index location is a local path (``photos.db``, ``file:///data/photos.db``) or a URI
``s3://bucket/prefix``, ``gs://bucket/prefix``, ``az://container/prefix``. The Lance
tables go through LanceDB, which speaks these URIs natively
(``lancedb.connect(uri, storage_options=...)``, :meth:`Location.connect`). The index's
other files (the manifest ``resedis.json``) go through :class:`Location`: local paths
keep the plain file code (write to a temp file, fsync, rename), URIs use ``pyarrow.fs``.

Why ``pyarrow.fs`` and not fsspec: pyarrow is already a core dependency (the tables are
Arrow) and ships S3, GCS and Azure filesystems compiled in; fsspec would need one more
package per store (s3fs, gcsfs, adlfs) as new dependencies, each with its own settings.

Credentials and endpoint come from the standard environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``,
``AZURE_STORAGE_ACCOUNT_NAME``, ``AZURE_STORAGE_ACCOUNT_KEY``,
``GOOGLE_APPLICATION_CREDENTIALS``, ...), overridden by explicit ``storage_options`` in
Lance's key names (``aws_endpoint``, ``aws_region``, ``allow_http``, ``timeout``, ...).
The merged options go to LanceDB as they are and are translated for pyarrow, so the
tables and the manifest are read from the same store with the same settings.

>>> loc = as_location("s3://bucket/photos.db", {"aws_region": "eu-west-1"})
>>> str(loc), loc.is_local
('s3://bucket/photos.db', False)
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Mapping
from urllib.parse import unquote, urlparse

from resedis.errors import ResedisError

# URI scheme -> store family.
SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure", "azure": "azure"}

# Explicit option aliases -> the canonical (Lance / object_store) key.
_ALIASES = {
    "access_key_id": "aws_access_key_id",
    "secret_access_key": "aws_secret_access_key",
    "session_token": "aws_session_token",
    "aws_token": "aws_session_token",
    "region": "aws_region",
    "aws_default_region": "aws_region",
    "endpoint": "aws_endpoint",
    "endpoint_url": "aws_endpoint",
    "aws_endpoint_url": "aws_endpoint",
    "account_name": "azure_storage_account_name",
    "account_key": "azure_storage_account_key",
    "azure_storage_access_key": "azure_storage_account_key",
    "sas_token": "azure_storage_sas_token",
    "azure_storage_sas_key": "azure_storage_sas_token",
}
# Canonical key -> environment variables read for it (first set wins), per store family.
_ENV = {
    "s3": {
        "aws_access_key_id": ("AWS_ACCESS_KEY_ID",),
        "aws_secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
        "aws_session_token": ("AWS_SESSION_TOKEN",),
        "aws_region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
        "aws_endpoint": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"),
        "allow_http": ("AWS_ALLOW_HTTP",),
    },
    "azure": {
        "azure_storage_account_name": ("AZURE_STORAGE_ACCOUNT_NAME",),
        "azure_storage_account_key": ("AZURE_STORAGE_ACCOUNT_KEY",),
        "azure_storage_sas_token": ("AZURE_STORAGE_SAS_TOKEN",),
    },
    "gcs": {},  # GOOGLE_APPLICATION_CREDENTIALS is read by both libraries themselves
}
_TRUE = {"1", "true", "yes", "on"}
# LanceDB's per-connection metadata cache (default 1 GiB) keeps the manifest of every table
# version it has seen; each commit adds a version whose manifest lists every fragment, so
# while an indexing run commits batch after batch the cache (and the process's RSS) grows
# with the square of the number of commits until compaction (measured: docs/integrity.md).
# Readers need only the latest versions' manifests, so a small bound costs nothing.
METADATA_CACHE_BYTES = 64 << 20


def is_uri(db: object) -> bool:
    """True when ``db`` is a string naming a URI (``scheme://...``), ``file://`` included."""
    return isinstance(db, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", db) is not None


def storage_options_from_pairs(pairs: list[tuple[str, str]] | None) -> dict[str, str] | None:
    """``--storage-option KEY=VALUE`` pairs -> dict (None when there are none); a key given
    twice with different values is an error."""
    if not pairs:
        return None
    out: dict[str, str] = {}
    for key, value in pairs:
        if key in out and out[key] != value:
            raise ResedisError(f"--storage-option {key} given twice ({out[key]!r} and {value!r})")
        out[key] = value
    return out


def _seconds(key: str, text: str) -> float:
    """A duration as Lance writes it (``5s``, ``500ms``, ``2min``; a bare number = seconds) -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min)?\s*", str(text))
    if m is None:
        raise ResedisError(f"storage option {key}={text!r}: expected a duration such as 5s, 500ms or 2min")
    scale = {"ms": 0.001, None: 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0}[m.group(2)]
    return float(m.group(1)) * scale


def _merge_options(family: str, explicit: Mapping[str, str] | None) -> dict[str, str]:
    """Environment settings of ``family`` overridden by the explicit options (canonical keys)."""
    merged: dict[str, str] = {}
    for key, names in _ENV[family].items():
        for name in names:
            if os.environ.get(name):
                merged[key] = os.environ[name]
                break
    for key, value in (explicit or {}).items():
        if not isinstance(key, str) or not key:
            raise ResedisError(f"storage option keys must be non-empty strings, got {key!r}")
        key = _ALIASES.get(key.lower(), key.lower())
        merged[key] = str(value)
    endpoint = merged.get("aws_endpoint", "")
    if family == "s3" and endpoint.startswith("http://") and "allow_http" not in merged:
        merged["allow_http"] = "true"  # the user named a plain-http endpoint (MinIO, a local S3)
    return merged


def as_location(db: str | os.PathLike | Location, storage_options: Mapping[str, str] | None = None) -> Location:
    """A local path, ``file://`` URI or object-store URI -> :class:`Location`.

    Local paths are expanded and resolved (as resedis always did). ``storage_options``
    only apply to object-store URIs (a local path given options is an error).
    """
    if isinstance(db, Location):
        if storage_options and db.is_local:
            raise ResedisError(f"{db}: storage options apply to object-store URIs (s3://, gs://, az://), not a local path")
        return Location(db.uri, db.family, {**db.options, **_merge_options(db.family, storage_options)}) if storage_options else db
    text = os.fspath(db) if not isinstance(db, str) else db
    if not is_uri(text):
        if storage_options:
            raise ResedisError(f"{db}: storage options apply to object-store URIs (s3://, gs://, az://), not a local path")
        return Location(str(Path(text).expanduser().resolve()), "local", {})
    parsed = urlparse(text)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ResedisError(f"{text}: a file:// URI names a path on this machine (file:///abs/path), not host {parsed.netloc!r}")
        return as_location(unquote(parsed.path), storage_options)
    if scheme not in SCHEMES:
        raise ResedisError(
            f"{text}: unsupported URI scheme {scheme!r}; an index lives in a local directory, file:///path, "
            "s3://bucket/prefix, gs://bucket/prefix or az://container/prefix"
        )
    if not parsed.netloc:
        raise ResedisError(f"{text}: the URI names no bucket (expected {scheme}://BUCKET/PREFIX)")
    prefix = parsed.path.strip("/")
    uri = f"{scheme}://{parsed.netloc}" + (f"/{prefix}" if prefix else "")
    return Location(uri, SCHEMES[scheme], _merge_options(SCHEMES[scheme], storage_options))


class Location:
    """An index directory: local (``local_path``) or on an object store (``uri`` + ``options``).

    ``str(location)`` is the path or URI; ``location / "name"`` a child location. File
    helpers take a name relative to the location. Use :func:`as_location` to make one.
    Errors of the store other than "not found" are ResedisError naming the URI.
    """

    def __init__(self, uri: str, family: str, options: Mapping[str, str]):
        self.uri, self.family, self.options = uri, family, dict(options)
        self._fs = None

    @property
    def is_local(self) -> bool:
        return self.family == "local"

    @property
    def local_path(self) -> Path | None:
        return Path(self.uri) if self.is_local else None

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __truediv__(self, name: str) -> Location:
        if self.is_local:
            return Location(str(Path(self.uri) / name), "local", {})
        return Location(f"{self.uri}/{name.strip('/')}", self.family, self.options)

    # -- LanceDB -------------------------------------------------------------------------
    def connect(self):
        """A LanceDB connection to this location, reading the latest version on every access,
        with its metadata cache bounded (:data:`METADATA_CACHE_BYTES`; see there why)."""
        import lancedb

        try:
            return lancedb.connect(
                self.uri, read_consistency_interval=_dt.timedelta(0), storage_options=self.options or None,
                session=lancedb.Session(metadata_cache_size_bytes=METADATA_CACHE_BYTES),
            )
        except (OSError, RuntimeError) as exc:
            raise ResedisError(f"{self.uri}: could not open the index tables: {exc}") from exc

    # -- files (non-Lance) ---------------------------------------------------------------
    def _filesystem(self):
        """(pyarrow FileSystem, base path inside it) for a remote location."""
        if self._fs is None:
            self._fs = _pyarrow_filesystem(self)
        return self._fs

    def _path(self, name: str) -> str:
        fs, base = self._filesystem()
        return f"{base}/{name}" if name else base

    def _error(self, action: str, exc: Exception) -> ResedisError:
        hint = ""
        if self.family == "s3":
            hint = " (check the bucket, the endpoint: AWS_ENDPOINT_URL or --storage-option aws_endpoint=URL, and the credentials)"
        return ResedisError(f"{self.uri}: could not {action}: {exc}{hint}")

    def exists(self, name: str = "") -> bool:
        """Whether the file (or, with no name, anything) exists at this location."""
        if self.is_local:
            return (Path(self.uri) / name).exists()
        from pyarrow import fs as pafs

        try:
            fs, _ = self._filesystem()
            if name:
                return fs.get_file_info(self._path(name)).type != pafs.FileType.NotFound
            return bool(self.list_names())
        except OSError as exc:
            raise self._error(f"look up {name or 'the index'}", exc) from exc

    def read_bytes(self, name: str) -> bytes:
        """The file's content; FileNotFoundError when it does not exist."""
        if self.is_local:
            return (Path(self.uri) / name).read_bytes()
        try:
            fs, _ = self._filesystem()
            with fs.open_input_stream(self._path(name)) as fh:
                return fh.read()
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise self._error(f"read {name}", exc) from exc

    def write_atomic(self, name: str, data: bytes) -> None:
        """Replace the file so that readers see the old or the new content, never a mix.

        Local: temp file in the same directory, fsync, rename, fsync the directory. Object
        stores: one upload of the whole object, which the store makes visible atomically
        (an S3 PUT, a GCS object finalisation, an Azure block-blob commit).
        """
        if not self.is_local:
            try:
                fs, _ = self._filesystem()
                with fs.open_output_stream(self._path(name)) as fh:
                    fh.write(data)
            except OSError as exc:
                raise self._error(f"write {name}", exc) from exc
            return
        directory = Path(self.uri)
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".resedis-", suffix=f".{name}.tmp", dir=directory)
        try:
            os.fchmod(fd, 0o644)  # mkstemp creates 0600; the file is as readable as the tables
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, directory / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def stamp(self, name: str) -> object:
        """A value that changes whenever the file changes (None when it cannot be read).
        Local: its mtime (ns). Remote: a hash of its content (object-store times have
        one-second resolution, too coarse to see two quick writes)."""
        if self.is_local:
            try:
                return (Path(self.uri) / name).stat().st_mtime_ns
            except OSError:
                return None
        try:
            return hashlib.sha256(self.read_bytes(name)).hexdigest()
        except (OSError, ResedisError):
            return None

    def list_names(self) -> list[str]:
        """Names of the entries directly below this location (empty when there is none)."""
        if self.is_local:
            path = Path(self.uri)
            return sorted(p.name for p in path.iterdir()) if path.is_dir() else []
        from pyarrow import fs as pafs

        try:
            fs, base = self._filesystem()
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=False, allow_not_found=True))
        except OSError as exc:
            raise self._error("list the index", exc) from exc
        return sorted(info.base_name for info in infos)

    def ensure_dir(self) -> None:
        """Create the directory of a local location (object stores have no directories)."""
        if not self.is_local:
            return
        path = Path(self.uri)
        if path.exists() and not path.is_dir():
            raise ResedisError(f"{path}: exists and is not a directory")
        path.mkdir(parents=True, exist_ok=True)

    def total_bytes(self) -> int:
        """Bytes of every file below this location (files vanishing meanwhile are skipped)."""
        if self.is_local:
            total = 0
            for dirpath, _, files in os.walk(self.uri):
                for name in files:
                    try:
                        total += (Path(dirpath) / name).stat().st_size
                    except OSError:
                        pass
            return total
        from pyarrow import fs as pafs

        try:
            fs, base = self._filesystem()
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        except OSError as exc:
            raise self._error("list the index", exc) from exc
        return sum(info.size or 0 for info in infos if info.type == pafs.FileType.File)


def _pyarrow_filesystem(loc: Location):
    """The pyarrow filesystem for a remote location, from its merged (canonical) options."""
    from pyarrow import fs as pafs

    opts = loc.options
    bucket_and_prefix = loc.uri.split("://", 1)[1]
    timeouts = {k: _seconds(k, opts[k]) for k in ("connect_timeout", "timeout") if k in opts}
    if loc.family == "s3":
        endpoint = opts.get("aws_endpoint")
        scheme = None
        if endpoint:
            parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
            scheme, endpoint = parsed.scheme, parsed.netloc + parsed.path.rstrip("/")
            if scheme == "http" and opts.get("allow_http", "").lower() not in _TRUE:
                raise ResedisError(f"{loc.uri}: endpoint {opts['aws_endpoint']} is plain http; set allow_http=true to use it")
        retries = opts.get("client_max_retries", "2")
        if not retries.isdigit():
            raise ResedisError(f"storage option client_max_retries={retries!r}: expected a whole number")
        fs = pafs.S3FileSystem(
            access_key=opts.get("aws_access_key_id"),
            secret_key=opts.get("aws_secret_access_key"),
            session_token=opts.get("aws_session_token"),
            region=opts.get("aws_region"),
            endpoint_override=endpoint,
            scheme=scheme,
            connect_timeout=timeouts.get("connect_timeout"),
            request_timeout=timeouts.get("timeout"),
            # A small object (the manifest) is written with one PutObject on close, not a multipart upload.
            allow_delayed_open=True,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1 + int(retries)),
        )
        return fs, bucket_and_prefix
    if loc.family == "gcs":
        fs = pafs.GcsFileSystem(retry_time_limit=_dt.timedelta(seconds=timeouts["timeout"]) if "timeout" in timeouts else None)
        return fs, bucket_and_prefix
    # Azure: az://container/prefix (account from the options / environment) or
    # abfs[s]://container@account.dfs.core.windows.net/prefix.
    netloc, _, prefix = bucket_and_prefix.partition("/")
    container, _, host = netloc.partition("@")
    account = opts.get("azure_storage_account_name") or (host.split(".", 1)[0] if host else None)
    if not account:
        raise ResedisError(
            f"{loc.uri}: no Azure storage account; set AZURE_STORAGE_ACCOUNT_NAME or "
            "--storage-option azure_storage_account_name=NAME"
        )
    fs = pafs.AzureFileSystem(
        account,
        account_key=opts.get("azure_storage_account_key"),
        sas_token=opts.get("azure_storage_sas_token"),
        client_id=opts.get("azure_client_id"),
        client_secret=opts.get("azure_client_secret"),
        tenant_id=opts.get("azure_tenant_id"),
    )
    return fs, f"{container}/{prefix}".rstrip("/")
