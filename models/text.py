"""A word-level text encoder for the toy world (a miniature of SD3's text towers).

The output is a token sequence (for cross-attention) plus a pooled vector (the
first, [CLS]-like position), the same two things SD3's encoders hand the transformer.
"""

from __future__ import annotations

import torch
from torch import nn

from flowarena.core.errors import FlowArenaError
from flowarena.tasks.toyworld.grammar import tokenize_words


class UnknownWordError(FlowArenaError, ValueError):
    """A prompt uses a word the toy model has never seen."""


class WordTokenizer:
    PAD, CLS = 0, 1

    def __init__(self, vocab: list[str], max_length: int = 16):
        self.vocab = list(vocab)
        self.index = {w: i + 2 for i, w in enumerate(self.vocab)}
        self.max_length = max_length
        self.skip_unknown = False  # True: read only known words, the first max_length - 1 of them

    def __len__(self) -> int:
        return len(self.vocab) + 2

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [B, L] and a padding mask [B, L] (True at padding)."""
        ids = torch.full((len(prompts), self.max_length), self.PAD, dtype=torch.long)
        for b, prompt in enumerate(prompts):
            words = tokenize_words(prompt)
            if self.skip_unknown:
                words = [w for w in words if w in self.index][: self.max_length - 1]
            unknown = [w for w in words if w not in self.index]
            if unknown:
                raise UnknownWordError(
                    f"word {unknown[0]!r} is outside the toy vocabulary "
                    f"({', '.join(self.vocab)})")
            if len(words) > self.max_length - 1:
                raise UnknownWordError(
                    f"prompt has {len(words)} words; the toy model reads at most "
                    f"{self.max_length - 1}")
            ids[b, 0] = self.CLS
            ids[b, 1:len(words) + 1] = torch.tensor([self.index[w] for w in words], dtype=torch.long)
        return ids, ids == self.PAD


class TextEncoder(nn.Module):
    def __init__(self, vocab_size: int, dim: int = 128, layers: int = 2, heads: int = 4,
                 max_length: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(1, max_length, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        # Word and position embeddings start at the same scale (GPT-2's 0.02): with
        # nn.Embedding's N(0, 1) the positions were 2 % of the words and the encoder read
        # prompts as bags of words, so "a red circle and a blue square" lost its binding.
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, ids: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(ids) + self.pos[:, : ids.shape[1]]
        h = self.norm(self.blocks(h, src_key_padding_mask=pad))
        return h, h[:, 0]
