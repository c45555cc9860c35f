"""Tiny random diffusers pipelines (SD3, FLUX.1, FLUX.2-klein) built from configs in code.

Helpers for the real-model tests, not tests: every component, tokenizers included, is
made here without downloading anything, then written with `save_pretrained` so the
adapters load it through the same `from_pretrained` path as a real checkpoint.
Latents are 16x16 at 32x32 pixels (a two-block VAE), so a step takes milliseconds.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

RESOLUTION = 32  # pixels; the VAEs below downsample by 2

_CHARS = string.ascii_lowercase + string.digits + ".,'!?-"


def clip_tokenizer():
    """A character-level CLIP BPE tokenizer (a few merges so BPE has work to do)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in _CHARS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    merges = [("r", "e"), ("i", "n"), ("t", "h")]  # the tokenizer wants tuples, not "a b" strings
    for a, b in merges:
        vocab[a + b] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(c, -2.0) for c in _CHARS] + [("▁" + c, -1.5) for c in _CHARS]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def qwen_tokenizer():
    """Byte-level BPE over the 256 byte symbols, with the chat template FLUX.2 applies."""
    from transformers import Qwen2TokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    for tok in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        vocab[tok] = len(vocab)
    tok = Qwen2TokenizerFast(vocab=vocab, merges=[], model_max_length=512)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return tok


def _clip_text(vocab_size: int, eos: int, hidden: int = 32, projection: bool = True):
    """SD3 uses the projected CLIP text models, FLUX.1 the plain one (its pooler output)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                         projection_dim=hidden, bos_token_id=0, eos_token_id=eos, pad_token_id=eos)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def _t5_text(vocab_size: int, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=64, num_layers=2,
                                   num_heads=4, relative_attention_num_buckets=8))


def _vae(latent_channels: int, flux2: bool = False):
    kw = dict(in_channels=3, out_channels=3, block_out_channels=(16, 16), layers_per_block=1,
              latent_channels=latent_channels, norm_num_groups=8,
              down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    if flux2:
        from diffusers import AutoencoderKLFlux2

        vae = AutoencoderKLFlux2(**kw)
        with torch.no_grad():  # non-trivial latent statistics, so the de-normalisation is exercised
            vae.bn.running_mean.uniform_(-0.5, 0.5)
            vae.bn.running_var.uniform_(0.5, 2.0)
        return vae
    from diffusers import AutoencoderKL

    # SD3-like scaling and shift, so `decode` is checked to undo both
    return AutoencoderKL(**kw, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                         use_post_quant_conv=False)


def tiny_sd3(seed: int = 0):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    clip, t5 = clip_tokenizer(), t5_tokenizer()
    eos = clip.convert_tokens_to_ids("<|endoftext|>")
    # the pooled vector is both CLIPs' (2 x 32); their token states (2 x 32) are padded to T5's 64
    transformer = SD3Transformer2DModel(
        sample_size=RESOLUTION // 2, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32,
        pooled_projection_dim=64, pos_embed_max_size=16)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae(4),
        text_encoder=_clip_text(len(clip), eos), tokenizer=clip,
        text_encoder_2=_clip_text(len(clip), eos), tokenizer_2=clip_tokenizer(),
        text_encoder_3=_t5_text(len(t5), d_model=64), tokenizer_3=t5)


def tiny_flux(seed: int = 0):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    clip, t5 = clip_tokenizer(), t5_tokenizer()
    eos = clip.convert_tokens_to_ids("<|endoftext|>")
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(2, 2, 4))
    # FLUX.1-dev's scheduler: resolution-dependent (dynamic) shift
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096)
    return FluxPipeline(transformer=transformer, scheduler=scheduler, vae=_vae(4),
                        text_encoder=_clip_text(len(clip), eos, projection=False), tokenizer=clip,
                        text_encoder_2=_t5_text(len(t5)), tokenizer_2=t5)


def tiny_flux2_klein(seed: int = 0):
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    tok = qwen_tokenizer()
    hidden = 16
    # the pipeline stacks hidden states 9, 18 and 27, so the text model needs 27 layers (tiny ones)
    text = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=32,
                                        num_hidden_layers=27, num_attention_heads=2, num_key_value_heads=1,
                                        head_dim=8, max_position_embeddings=512, tie_word_embeddings=True))
    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                          attention_head_dim=8, num_attention_heads=2,
                                          joint_attention_dim=3 * hidden, timestep_guidance_channels=32,
                                          axes_dims_rope=(2, 2, 2, 2), guidance_embeds=False)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    return Flux2KleinPipeline(scheduler=scheduler, vae=_vae(4, flux2=True), text_encoder=text, tokenizer=tok,
                              transformer=transformer, is_distilled=False)


BUILDERS = {"sd35": tiny_sd3, "flux1-dev": tiny_flux, "flux2-klein": tiny_flux2_klein}


def save_tiny(name: str, directory: str | Path, seed: int = 0) -> Path:
    """Build the tiny pipeline for model `name` and `save_pretrained` it to `directory`."""
    directory = Path(directory)
    BUILDERS[name](seed).save_pretrained(directory)
    return directory
