"""What the commands share: argparse ``type=`` validators (a bad value is a one-line usage error),
the common options, and :func:`given` (only the options the user set reach the library)."""

from __future__ import annotations

import argparse
import inspect
import re
from typing import Callable


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def float_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False, note: str = "") -> Callable[[str], float]:
    """A number in the interval from ``low`` to ``high`` (each end closed unless ``*_open``)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below):
            raise argparse.ArgumentTypeError(f"must be in {interval}{note}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
positive_float = float_in(0.0, float("inf"), low_open=True)
unit_float = float_in(0.0, 1.0)


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads N`` (N >= 1): bound the process's torch and numpy-BLAS CPU threads
    (:func:`resedis.threads.set_threads`); absent = the libraries' defaults."""
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="CPU threads for torch and numpy's BLAS in this process (N >= 1; BLAS needs threadpoolctl "
        "installed, else set OPENBLAS_NUM_THREADS); bounds a process on a shared machine "
        "(default: the libraries' defaults, one per core)",
    )


def add_split_option(parser: argparse.ArgumentParser) -> None:
    """``--split NAME``: one split of a RefCOCO-family / gRefCOCO dataset (``load_dataset(split=)``)."""
    parser.add_argument("--split", metavar="NAME", help="keep one split of a RefCOCO-family / gRefCOCO dataset (train, "
                        "val, testA, ... as in its refs file): its queries, and its images as the corpus (default: all "
                        "splits)")


def storage_option(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` of ``--storage-option`` (an object-store setting in LanceDB's key names,
    e.g. ``aws_endpoint=http://localhost:9000``) -> ``(key, value)``, key lower-cased."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", key):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. aws_region=eu-west-1), got {text!r}")
    if not value.strip():
        raise argparse.ArgumentTypeError(f"--storage-option {key}: empty value in {text!r}")
    return key.lower(), value.strip()


STORAGE_OPTION_HELP = (
    "object-store setting for an s3:// / gs:// / az:// index, in LanceDB's key names (repeatable), e.g. "
    "aws_endpoint=http://localhost:9000, aws_region=eu-west-1, allow_http=true, timeout=30s; "
    "the standard environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...) is read too and overridden by these"
)


def given(args: argparse.Namespace, *names: str) -> dict:
    """``{name: value}`` of the options among ``names`` that the user set (not None), so a
    library config built from them keeps its own defaults for the rest."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def field_default(cls, name: str):
    """The default of dataclass field ``name`` of ``cls`` (for help texts: the library's value)."""
    return cls.__dataclass_fields__[name].default


def param_default(func, name: str):
    """The default of keyword ``name`` of ``func`` (for help texts: the library's value)."""
    return inspect.signature(func).parameters[name].default
