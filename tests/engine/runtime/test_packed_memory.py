"""Packed weight bytes (exact bits per weight for quantized linears, the rest as held) beside what a
fake-quantized variant holds, and both in the MemoryUse of a measured generation."""

from __future__ import annotations

import pytest

from engine.methods import RTNConfig, quantize_model
from engine.quant.schemes import QuantScheme
from engine.runtime.generation import GenerationSettings
from engine.runtime.kv_cache import KVCacheConfig
from engine.runtime.measured import MemoryUse, generate_measured
from engine.sizing.estimate import measured_bytes
from engine.sizing.packed import packed_weight_bytes
from tests.conftest import build_char_tokenizer, build_tiny_llama

pytestmark = pytest.mark.usefixtures("single_thread")

W4_G32 = QuantScheme(4, "int", True, "group", 32)  # 4 bits + a 16-bit scale per 32 weights: 4.5 bits
# The tiny Llama (hidden 64, MLP 128, 4 heads of 16, 2 KV heads, 2 layers, vocab 96), float32:
LINEAR_WEIGHTS = 2 * (64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 3 * 64 * 128)  # q k v o gate up down: 73,728
UNQUANTIZED_PARAMS = 96 * 64 + 96 * 64 + (2 * 2 + 1) * 64  # embeddings, lm_head (kept), RMSNorm weights


def buffer_bytes(model) -> int:
    """The rotary embedding's inverse frequencies (transformers keeps two copies): held as they are."""
    return sum(b.numel() * b.element_size() for b in model.buffers())


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_llama()


@pytest.fixture(scope="module")
def w4(tiny):
    return quantize_model(tiny, RTNConfig(W4_G32))


def test_packed_bytes_of_a_4_bit_variant_are_hand_computed_and_below_the_reference(tiny, w4):
    assert w4.bits_per_weight == pytest.approx(4.5)
    expected = int(4.5 * LINEAR_WEIGHTS / 8) + UNQUANTIZED_PARAMS * 4 + buffer_bytes(tiny)  # float32
    assert packed_weight_bytes(w4) == expected
    assert int(4.5 * LINEAR_WEIGHTS / 8) == 41_472 and UNQUANTIZED_PARAMS * 4 == 50_432
    reference = sum(measured_bytes(tiny).values())
    assert packed_weight_bytes(tiny) == reference  # an unquantized model: packed is what it holds
    assert packed_weight_bytes(w4) < reference
    # held: the fake-quantized copy keeps float32 weights plus its scales, more than the reference
    assert sum(measured_bytes(w4.model).values()) > reference


def test_tied_embeddings_are_counted_once():
    tied = build_tiny_llama(tie_word_embeddings=True)
    variant = quantize_model(tied, RTNConfig(W4_G32))
    head = 96 * 64  # the lm_head is the embedding table: stored once
    assert packed_weight_bytes(variant) == (
        int(4.5 * LINEAR_WEIGHTS / 8) + (UNQUANTIZED_PARAMS - head) * 4 + buffer_bytes(tied)
    )


def test_packed_bytes_refuse_what_they_cannot_size():
    with pytest.raises(TypeError, match="QuantizedModel"):
        packed_weight_bytes("W4")


def _generate(model, kv=None) -> MemoryUse:
    settings = GenerationSettings(max_new_tokens=6, temperature=0.0, top_p=1.0, seed=0, chat=False)
    return generate_measured(model, build_char_tokenizer(), "hello there", settings, kv)[1]


def test_a_measured_generation_reports_packed_and_held(tiny, w4):
    reference = _generate(tiny)
    assert reference.packed_total == reference.total and not reference.held_exceeds_packed
    variant = _generate(w4)  # the QuantizedModel: its layers' bits are known
    assert variant.weight_packed_bytes == packed_weight_bytes(w4)
    assert variant.weight_bytes == sum(measured_bytes(w4.model).values())
    assert variant.weight_dtype == "float32"
    assert variant.packed_total < reference.packed_total < variant.total
    assert variant.held_exceeds_packed
    bare = _generate(w4.model)  # only the module: nothing says its weights are quantized
    assert bare.weight_packed_bytes == bare.weight_bytes


def test_a_quantized_kv_cache_is_packed_in_the_total(tiny):
    memory = _generate(tiny, KVCacheConfig(QuantScheme(4, "int", False, "channel")))
    assert memory.kv_packed_bytes is not None and memory.kv_packed_bytes < memory.kv_bytes
    assert memory.packed_total == memory.weight_bytes + memory.kv_packed_bytes
    assert memory.total == memory.weight_bytes + memory.kv_bytes
    assert memory.packed_weights == memory.weight_bytes  # weights untouched: packed is held
