"""Fetch the official evaluators that the tests cross-check resedis against.

SAM 3's SA-Co evaluator (``sam3/eval/cgf1_eval.py``, PyPI ``sam3``) and the D³ toolkit
(``d_cube``, PyPI ``ddd-dataset``) cannot be installed beside resedis' dependencies
(``sam3`` pins numpy < 2.4 and pulls timm/torchvision), yet the files the tests read need
only numpy, scipy and pycocotools. So their wheels are downloaded without dependencies
and unpacked into ``.official/site`` (git-ignored); ``tests/conftest.py`` puts that folder
on ``sys.path`` for the tests marked ``official``. Nothing is installed.

    python scripts/fetch_official_evaluators.py     # idempotent; needs PyPI once
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

WHEELS = ("sam3==0.1.4", "ddd-dataset==0.1.2")
ROOT = Path(__file__).resolve().parents[1] / ".official"


def main() -> int:
    site, wheels = ROOT / "site", ROOT / "wheels"
    if (site / "sam3" / "eval" / "cgf1_eval.py").is_file() and (site / "d_cube").is_dir():
        print(f"official evaluators already in {site}")
        return 0
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels), *WHEELS], check=True)
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(site)
    print(f"official evaluators unpacked into {site}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
