"""No surprise on CPU: how long an indexing run will take, from its own first images.

:class:`IndexEstimate` watches the writer's commits. Once the first batch of at least
:data:`WARMUP_IMAGES` images is encoded (model warm-up included, so the figure errs on
the slow side), it produces one line::

    estimate: 10000 images with owlv2:google/owlv2-base-patch16-ensemble on cpu:
    ≈ 46.3 h at 0.060 img/s (16.6 s/img, 1113.8 GFLOP/img; measured on the first 8 images) ...

which ``build_index`` logs (``resedis index`` prints it). On a CPU with an OWLv2 model it
also names the faster choice (OWL-ViT B/32, about a tenth of the compute per image).
"""

from __future__ import annotations

import time

from resedis.errors import ResedisError
from resedis.models import parse_spec
from resedis.models.cost import checkpoint_gflops, default_gflops
from resedis.models.fingerprint import encoder_weights_dir

WARMUP_IMAGES = 4
#: Runs shorter than this (estimated, seconds) get the line without the model hint.
HINT_ABOVE_S = 600.0


def format_duration(seconds: float) -> str:
    """``"42 s"``, ``"3.5 min"``, ``"2.1 h"``, ``"3.2 days"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


class IndexEstimate:
    """Estimate of a run of ``total`` images to encode with model ``spec`` on ``device``.

    ``gflops``: the model's cost per image, when known (:mod:`resedis.models.cost`).
    Call :meth:`start` when encoding starts and :meth:`observe` after each commit with
    the number of images encoded so far; it returns the line once, else None.
    """

    def __init__(self, total: int, spec: str, device: str, gflops: float | None = None,
                 warmup_images: int = WARMUP_IMAGES):
        self.total = int(total)
        self.spec = spec
        self.device = str(device)
        self.gflops = gflops
        self.warmup_images = max(1, int(warmup_images))
        self.started: float | None = None
        self.done = False
        self.rate: float | None = None

    def start(self) -> None:
        self.started = time.perf_counter()

    def observe(self, encoded: int, now: float | None = None) -> str | None:
        if self.done or self.started is None or encoded < min(self.warmup_images, self.total) or encoded <= 0:
            return None
        self.done = True
        elapsed = (now if now is not None else time.perf_counter()) - self.started
        if elapsed <= 0 or encoded >= self.total:
            return None
        return self.line(encoded, elapsed)

    def line(self, encoded: int, elapsed: float) -> str:
        """The estimate from ``encoded`` images in ``elapsed`` seconds."""
        self.rate = encoded / elapsed
        total_s = self.total / self.rate
        remaining_s = (self.total - encoded) / self.rate
        cost = "" if self.gflops is None else f", {self.gflops:.1f} GFLOP/img" if self.gflops >= 1 else f", {self.gflops:.3g} GFLOP/img"
        text = (
            f"estimate: {self.total} images with {self.spec} on {self.device}: ≈ {format_duration(total_s)} in all, "
            f"{format_duration(remaining_s)} to go, at {self.rate:.3g} img/s ({elapsed / encoded:.2f} s/img{cost}; "
            f"measured on the first {encoded} images, warm-up included)"
        )
        if self.device.startswith("cpu") and total_s > HINT_ABOVE_S and self.spec.startswith("owlv2"):
            fast, slow = default_gflops("owlvit"), default_gflops("owlv2")
            text += (
                f"; on a CPU, OWL-ViT B/32 (--model owlvit, {fast:.1f} GFLOP/img) needs about {slow / fast:.0f}x less "
                f"compute per image than OWLv2 B/16 ({slow:.1f}); a GPU is faster still (Ctrl-C stops, a rerun "
                "resumes; an index keeps one model, so choose before indexing)"
            )
        return text


def backend_gflops(backend) -> float | None:
    """GFLOP per image of a loaded region encoder, from its checkpoint's config (None when
    it cannot be told: no config.json, a family without a cost model)."""
    try:
        family = parse_spec(backend.spec).family
        return checkpoint_gflops(family, encoder_weights_dir(backend))
    except (ResedisError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


__all__ = ["HINT_ABOVE_S", "IndexEstimate", "WARMUP_IMAGES", "backend_gflops", "format_duration"]
