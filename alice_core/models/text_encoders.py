"""Text encoders behind the `TextEncoder` interface: Wan's umT5-XXL and the small bundled MiniLM.

Both return token states [B, L, dim] with L fixed (512 for umT5 like Wan's text_len, 32 by default for
MiniLM) and every position past a prompt's own token count exactly zero. Wan cuts the umT5 output to each
prompt's true length and the DiT zero-pads it back to text_len, so zeros past the length are the same thing.

Loading them from files is loading/text_encoders.py's job; these classes take a ready model and tokenizer.
"""

from __future__ import annotations

import html
import re

import torch

from ..errors import AliceError

WAN_TEXT_LEN = 512
MINILM_MAX_LENGTH = 32

def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning ('whitespace' mode, without ftfy): unescape HTML entities, collapse whitespace, strip."""
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


def _check_prompts(prompts: list[str]) -> None:
    # A bare string would be tokenised as one prompt by some tokenizers and char-split by others: refuse it.
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError("encode() takes a list of prompt strings")
    if not prompts:
        raise ValueError("encode() needs at least one prompt")


def _zero_past_length(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # masked_fill rather than a multiply so padded positions are exactly 0 even if they held inf/nan.
    return states.masked_fill(~mask.bool().unsqueeze(-1), 0.0)


class UMT5TextEncoder:
    """umT5 encoder as Wan uses it: 512 tokens, attention-masked, zeros past each prompt's length."""

    def __init__(self, model, tokenizer, max_length: int = WAN_TEXT_LEN) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.dim: int = model.config.d_model

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        _check_prompts(prompts)
        batch = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        device = self.model.device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return _zero_past_length(states, mask)


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 token states (dim 384, fp32), the small text encoder for tiny models and tests."""

    def __init__(self, tokenizer, model, max_length: int = MINILM_MAX_LENGTH) -> None:
        if not 2 <= max_length <= 512:  # room for [CLS] and [SEP]; BERT's position table has 512 rows
            raise AliceError(f"MiniLM max_length must be between 2 and 512, got {max_length}")
        self.tokenizer, self.model = tokenizer, model
        self.max_length = max_length
        self.device = next(model.parameters()).device
        self.dim: int = self.model.config.hidden_size

    def token_ids(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """input ids and attention mask [B, max_length]: [CLS] prompt [SEP], truncated, padded with [PAD]."""
        encodings = self.tokenizer.encode_batch(list(prompts))
        ids = torch.zeros(len(prompts), self.max_length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, enc in enumerate(encodings):
            # Truncating keeps the closing [SEP], as transformers' truncation does.
            tokens = enc.ids if len(enc.ids) <= self.max_length else enc.ids[: self.max_length - 1] + enc.ids[-1:]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        _check_prompts(prompts)
        ids, mask = self.token_ids(prompts)
        return _zero_past_length(self.model(ids, mask), mask)
