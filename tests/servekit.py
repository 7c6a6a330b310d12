"""Helpers shared by the service tests (tests/server/, test_web_browser.py)."""

from __future__ import annotations

from pathlib import Path


def tiny_sam(tiny_models: dict, out_dir: Path) -> Path:
    """A tiny random-init SAM checkpoint (``sam:<dir>``): the shared fixture's when it has
    one, else written here (config + weights + processor; no tokenizer needed)."""
    if "sam" in tiny_models:
        return Path(tiny_models["sam"])
    import torch
    from transformers import SamConfig, SamModel, SamProcessor
    from transformers.models.sam.configuration_sam import (
        SamMaskDecoderConfig,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    try:
        from transformers import SamImageProcessorPil as ImageProcessor
    except ImportError:  # older transformers
        from transformers import SamImageProcessor as ImageProcessor

    torch.manual_seed(0)
    vision = SamVisionConfig(
        hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2, image_size=128,
        patch_size=16, mlp_dim=64, global_attn_indexes=[1], window_size=4, num_pos_feats=8,
    )
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=128, patch_size=16, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_dim=32,
                                   iou_head_hidden_dim=16)
    config = SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                       mask_decoder_config=decoder.to_dict())
    out_dir = Path(out_dir)
    SamModel(config).eval().save_pretrained(out_dir)
    processor = ImageProcessor(size={"longest_edge": 128}, pad_size={"height": 128, "width": 128})
    SamProcessor(image_processor=processor).save_pretrained(out_dir)
    return out_dir
