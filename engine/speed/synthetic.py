"""Models of any catalog config with random weights, and a tokenizer for them: speed without a download.

`synthetic_model` builds the architecture directly on the device (std 0.02 weights); its outputs are
meaningless, its speed is the real model's. It refuses, with the numbers, when the weights would not fit
in free memory.
"""

from __future__ import annotations

import torch
from torch import nn

from engine._types import require_free
from engine.models.loading import count_parameters_from_config

SYNTHETIC_HEADROOM = 1.1  # weights plus the allocator's slack while building
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


class SyntheticTokenizer:
    """For synthetic models: one token per character (code point modulo the vocabulary), no specials."""

    eos_token_id = None
    chat_template = None

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def __call__(self, text: str, return_tensors: str = "pt", **_) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.tensor([[1 + ord(c) % (self.vocab_size - 1) for c in text]])}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(str(int(i)) for i in ids)


def synthetic_model(
    config, dtype: torch.dtype = torch.bfloat16, device: str = "cuda", seed: int = 0
) -> nn.Module:
    """A model of `config`'s shape with random weights (std 0.02), built directly on `device`.

    For speed only: its outputs are meaningless. Raises NotEnoughMemoryError, with the numbers, when the
    weights would not fit in free memory.
    """
    from transformers import AutoModelForCausalLM

    parameters = count_parameters_from_config(config)
    require_free(
        parameters * torch.finfo(dtype).bits / 8 * SYNTHETIC_HEADROOM,
        device,
        f"Random weights for this config ({parameters / 1e9:.2f} B parameters in "
        f"{DTYPE_NAMES.get(dtype, dtype)})",
        "Pick a smaller config or a 16-bit dtype, or run on a larger device.",
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()
