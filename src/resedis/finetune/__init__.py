"""Fine-tuning OWL detectors for referring search and discovery (``resedis finetune``).

>>> from resedis.finetune import FinetuneConfig, finetune
>>> finetune("train_dir", "out_dir", model="owlv2:/path/to/ckpt", val_dataset="val_dir",
...          config=FinetuneConfig(epochs=3))                                # doctest: +SKIP

The result loads with ``Owlv2ForObjectDetection.from_pretrained(out_dir)`` and as the
model spec ``owlv2:/abs/out_dir`` (or ``owlv2:./out_dir``); ``out_dir/resedis_checkpoint.json``
holds ``presence_threshold``.
"""

from resedis.finetune.checkpoint import META_FILE, read_meta
from resedis.finetune.losses import LossWeights
from resedis.finetune.run import FinetuneResult, finetune, load_detector, refit_threshold
from resedis.finetune.scratch import ScratchConfig, build_scratch_owlv2, build_word_tokenizer
from resedis.finetune.train import FinetuneConfig

__all__ = [
    "META_FILE",
    "FinetuneConfig",
    "FinetuneResult",
    "LossWeights",
    "ScratchConfig",
    "build_scratch_owlv2",
    "build_word_tokenizer",
    "finetune",
    "load_detector",
    "read_meta",
    "refit_threshold",
]
