"""Test helpers shipped with the package (tiny random checkpoints for offline tests).

>>> from resedis.testing import make_tiny_checkpoints
>>> paths = make_tiny_checkpoints("/tmp/tiny")  # doctest: +SKIP
>>> paths["owlv2"]  # load with resedis.models.load_model("owlv2:/tmp/tiny/owlv2")  # doctest: +SKIP
"""

from __future__ import annotations


def __getattr__(name: str):
    # Lazy, so ``python -m resedis.testing.tiny`` does not import the module twice.
    if name == "make_tiny_checkpoints":
        from resedis.testing.tiny import make_tiny_checkpoints

        return make_tiny_checkpoints
    raise AttributeError(name)


__all__ = ["make_tiny_checkpoints"]
