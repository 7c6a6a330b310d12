"""Optional dependencies of the tests: a missing one FAILS the test with the install line,
it never skips it (a skip would hide a regression behind "not installed").

``pip install -e '.[dev,serve,ray]'`` (the README's test command) installs every Python
package the suite needs; Chromium is a system package. Tests that need Chromium carry the
``browser`` marker, so a machine without it deselects them on purpose: ``-m "not browser"``.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest

CHROMIUM = os.environ.get("RESEDIS_CHROMIUM", "/usr/bin/chromium")


def require(module: str, extra: str) -> ModuleType:
    """Import ``module``, or fail naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"{module} is not installed ({exc}); install the test dependencies: pip install -e '.[{extra}]'",
                    pytrace=False)


def require_chromium() -> str:
    """The Chromium executable for the ``browser`` tests, or fail saying how to get it."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: apt-get install chromium (or set RESEDIS_CHROMIUM), "
                    "or deselect the browser tests with -m 'not browser'", pytrace=False)
    return CHROMIUM
