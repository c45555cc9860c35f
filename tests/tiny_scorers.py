"""Tiny random scorers (Qwen3-VL judge, Mask2Former detector, CLIP) built from configs in code.

Helpers for the scorer tests, not tests: every part, tokenizers and processors included,
is made here without downloading anything and written with `save_pretrained`, so the
rewards load it through the same `from_pretrained` path as a real checkpoint. The
weights are random: the tests check plumbing and protocol, not scores.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.tiny_pipelines import clip_tokenizer

QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>")
# Qwen3-VL's template for a user turn holding an image and a text (no system turn)
QWEN_VL_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|>"
    "<|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def save_qwen3_vl(path: Path, seed: int = 0) -> Path:
    """A two-layer Qwen3-VL with a byte-level tokenizer and the Qwen2-VL image processor."""
    from transformers import Qwen2TokenizerFast, Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    for tok in QWEN_SPECIALS:
        vocab[tok] = len(vocab)
    merges = [("Ġ", "y"), ("Ġy", "e"), ("Ġye", "s")]  # " yes" is one token, "Yes" three
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Qwen2TokenizerFast(vocab=vocab, merges=merges, model_max_length=4096)
    tok.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIALS[1:])})
    tok.chat_template = QWEN_VL_TEMPLATE
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    images = Qwen2VLImageProcessorPil(patch_size=16, temporal_patch_size=2, merge_size=2,
                                      min_pixels=32 * 32, max_pixels=64 * 64)
    cfg = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         max_position_embeddings=1024,
                         rope_scaling={"rope_type": "default", "mrope_section": [1, 1, 2],
                                       "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                           num_position_embeddings=16, deepstack_visual_indexes=[0]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    Qwen3VLForConditionalGeneration(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    images.save_pretrained(path)
    return path


def save_clip(path: Path, seed: int = 0) -> Path:
    """A two-layer CLIP (text and vision, 32 px images) with a character-level tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tok = clip_tokenizer()
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(seed)
    CLIPModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32},
                       crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def save_mask2former(path: Path, seed: int = 0, names: list[str] | None = None) -> Path:
    """A Mask2Former with a one-block-per-stage Swin backbone and COCO's 80 instance labels
    (or `names`)."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig
    from transformers.models.mask2former.image_processing_pil_mask2former import (
        Mask2FormerImageProcessorPil as Mask2FormerImageProcessor,
    )

    from flowarena.tasks.geneval_rules import class_names

    backbone = SwinConfig(image_size=64, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                          window_size=2, out_features=["stage1", "stage2", "stage3", "stage4"])
    names = names or class_names()
    cfg = Mask2FormerConfig(backbone_config=backbone, num_labels=len(names), id2label=dict(enumerate(names)),
                            label2id={n: i for i, n in enumerate(names)}, hidden_dim=32, mask_feature_size=32,
                            feature_size=32, encoder_layers=1, decoder_layers=2, num_queries=10,
                            encoder_feedforward_dim=64, dim_feedforward=64, num_attention_heads=2,
                            common_stride=4)
    torch.manual_seed(seed)
    Mask2FormerForUniversalSegmentation(cfg).save_pretrained(path)
    Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}, size_divisor=32,
                              ignore_index=255).save_pretrained(path)
    return path
