"""llama.cpp's file-level mixes (engine.quant.gguf.mixes): which type each tensor gets, checked by hand.

The expected types below were worked out by hand from ggml-org/llama.cpp src/llama-quant.cpp at commit
007dbbf3fd17eefe9b47fee45f48f7ba5e62b714 (`llama_tensor_get_type_impl`, `tensor_type_fallback`):

SmolLM2-135M (the default model): 30 layers, hidden 576 (= 2.25 x 256), MLP 1536 (= 6 x 256), 3 KV heads
of 64 (k / v are 192 x 576), tied embeddings (49152 x 576). use_more_bits(i, 30): 30 // 8 = 3,
7 * 30 // 8 = 26, so layers 0-2, 26-29 and (i - 3) % 3 == 2: 5, 8, 11, 14, 17, 20, 23 (14 layers).
- Q4_K_M: token_embd (tied, so the output rule; 576 % 256 != 0) Q8_0; attn_v Q6_K on those 14 layers,
  rows of 576 fall back to Q8_0, else Q4_K -> Q5_0; ffn_down (rows 1536 fit) Q6_K on the 14, Q4_K on 16;
  attn_q / attn_k / attn_output / ffn_gate / ffn_up Q4_K -> Q5_0.
- Q5_K_M: the same layers; base Q5_K falls back to Q5_1; ffn_down Q6_K / Q5_K.
- Q3_K_M: attn_v Q5_K on layers 0-1 (-> Q5_1), Q4_K after (-> Q5_0); attn_output Q4_K (-> Q5_0);
  ffn_down Q5_K on layer 0 (30 // 16 = 1), Q4_K after; q, k, gate, up Q3_K -> Q4_0; token_embd Q8_0.
"""

from __future__ import annotations

import pytest

from engine.quant.gguf import Q3_K, Q4_K, Q5_K, Q6_K
from engine.quant.gguf.mixes import (
    GGUF_MIXES,
    Q3_K_M,
    Q4_K_M,
    Q5_K_M,
    Role,
    gguf_mix,
    layer_of,
    role_of,
    use_more_bits,
)

MORE_BITS_30 = {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29}
SMOL_LAYERS = 30


def smollm2_tensors() -> list[tuple[str, int]]:
    """The default model's quantized tensors (Hugging Face names) with their row lengths, in file order."""
    rows = {"q_proj": 576, "k_proj": 576, "v_proj": 576, "o_proj": 576}
    rows |= {"gate_proj": 576, "up_proj": 576, "down_proj": 1536}
    tensors = [("model.embed_tokens", 576)]
    for layer in range(SMOL_LAYERS):
        for name, length in rows.items():
            part = "self_attn" if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            tensors.append((f"model.layers.{layer}.{part}.{name}", length))
    return tensors


def expected_smollm2(mix_name: str) -> dict[str, tuple[str, str]]:
    """{tensor: (asked, stored)} by hand, per the module docstring."""
    table = {"model.embed_tokens": ("Q8_0", "Q8_0")}
    for i in range(SMOL_LAYERS):
        more = i in MORE_BITS_30
        if mix_name == "Q4_K_M":
            v = ("Q6_K", "Q8_0") if more else ("Q4_K", "Q5_0")
            down = ("Q6_K", "Q6_K") if more else ("Q4_K", "Q4_K")
            rest = {"q_proj": ("Q4_K", "Q5_0"), "o_proj": ("Q4_K", "Q5_0")}
            other = ("Q4_K", "Q5_0")
        elif mix_name == "Q5_K_M":
            v = ("Q6_K", "Q8_0") if more else ("Q5_K", "Q5_1")
            down = ("Q6_K", "Q6_K") if more else ("Q5_K", "Q5_K")
            rest = {"q_proj": ("Q5_K", "Q5_1"), "o_proj": ("Q5_K", "Q5_1")}
            other = ("Q5_K", "Q5_1")
        else:  # Q3_K_M
            v = ("Q5_K", "Q5_1") if i < 2 else ("Q4_K", "Q5_0")
            down = ("Q5_K", "Q5_K") if i < 1 else ("Q4_K", "Q4_K")
            rest = {"q_proj": ("Q3_K", "Q4_0"), "o_proj": ("Q4_K", "Q5_0")}
            other = ("Q3_K", "Q4_0")
        prefix = f"model.layers.{i}"
        table[f"{prefix}.self_attn.q_proj"] = rest["q_proj"]
        table[f"{prefix}.self_attn.k_proj"] = other
        table[f"{prefix}.self_attn.v_proj"] = v
        table[f"{prefix}.self_attn.o_proj"] = rest["o_proj"]
        table[f"{prefix}.mlp.gate_proj"] = other
        table[f"{prefix}.mlp.up_proj"] = other
        table[f"{prefix}.mlp.down_proj"] = down
    return table


def names(plan) -> dict[str, tuple[str, str]]:
    return {name: (asked.name, used.name if used else "F16") for name, (asked, used) in plan.items()}


def test_use_more_bits_is_llama_cpps_choice():
    assert {i for i in range(30) if use_more_bits(i, 30)} == MORE_BITS_30
    # 32 layers (Llama-3.1-8B): 0-3, 28-31, and (i - 4) % 3 == 2: 6, 9, ..., 27.
    assert {i for i in range(32) if use_more_bits(i, 32)} == {0, 1, 2, 3, 28, 29, 30, 31} | set(
        range(6, 28, 3)
    )


@pytest.mark.parametrize("mix", ["Q4_K_M", "Q5_K_M", "Q3_K_M"])
def test_default_model_tensor_types_by_hand(mix):
    plan = gguf_mix(mix).plan(smollm2_tensors(), SMOL_LAYERS, tied=True)
    assert names(plan) == expected_smollm2(mix)


@pytest.mark.slow
def test_the_real_default_model_names_map_to_the_same_roles(default_loaded):
    """Our hand list of names is the real model's: every linear and the embedding, in order."""
    from engine.quant.linear import linear_names

    model = default_loaded.model
    real = ["model.embed_tokens", *linear_names(model)]
    assert [name for name, _ in smollm2_tensors()] == real
    assert all(model.get_submodule(n).weight.shape[-1] == rows for n, rows in smollm2_tensors())


def test_llama_31_8b_untied_head_and_embedding():
    """Rows of 4096 fit 256: the head is Q6_K, an untied token embedding the base type; 32 layers."""
    for mix, base in ((Q4_K_M, Q4_K), (Q5_K_M, Q5_K), (Q3_K_M, Q3_K)):
        assert mix.tensor_type("lm_head", None, 32, 4096) is Q6_K
        assert mix.tensor_type("model.embed_tokens", None, 32, 4096) is base
        assert mix.tensor_type("output.weight", None, 32, 4096) is Q6_K  # GGUF names too
    assert Q4_K_M.tensor_type("blk.6.attn_v.weight", None, 32, 4096) is Q6_K
    assert Q4_K_M.tensor_type("blk.7.attn_v.weight", None, 32, 4096) is Q4_K
    assert Q4_K_M.tensor_type("model.layers.31.mlp.down_proj", None, 32, 14336) is Q6_K
    assert Q3_K_M.tensor_type("model.layers.1.mlp.down_proj", None, 32, 14336) is Q5_K  # 32 // 16 = 2
    assert Q3_K_M.tensor_type("model.layers.2.mlp.down_proj", None, 32, 14336) is Q4_K
    # The small mixes: Q4_K_S raises attn_v on the first 4 layers and ffn_down on the first eighth.
    q4_k_s = GGUF_MIXES["Q4_K_S"]
    assert [q4_k_s.tensor_type(Role.ATTN_V, i, 32, 4096) for i in (3, 4)] == [Q5_K, Q4_K]
    assert [q4_k_s.tensor_type(Role.FFN_DOWN, i, 32, 14336) for i in (3, 4)] == [Q5_K, Q4_K]
    assert GGUF_MIXES["Q5_K_S"].tensor_type(Role.ATTN_V, 0, 32, 4096) is Q5_K


def test_eight_experts_raise_attention_and_other_moe_read_the_layer_from_the_name():
    """Mixtral (8 experts): attn_k / attn_v Q8_0, attn_output Q5_K for Q4_K_M (not Q5_K_M); the router is
    not quantized. With 128 experts (Qwen3-30B-A3B) ffn_down's layer comes from the name, not the count."""
    tensors = [
        ("model.layers.0.self_attn.k_proj", 4096),
        ("model.layers.0.self_attn.v_proj", 4096),
        ("model.layers.0.self_attn.o_proj", 4096),
        ("model.layers.0.block_sparse_moe.gate", 4096),
        ("model.layers.0.block_sparse_moe.experts.0.w2", 14336),
        ("model.layers.0.block_sparse_moe.experts.1.w2", 14336),
        ("model.layers.4.block_sparse_moe.experts.0.w2", 14336),
    ]
    plan = names(Q4_K_M.plan(tensors, 32, n_expert=8))
    assert (
        plan["model.layers.0.self_attn.k_proj"] == plan["model.layers.0.self_attn.v_proj"] == ("Q8_0", "Q8_0")
    )
    assert plan["model.layers.0.self_attn.o_proj"] == ("Q5_K", "Q5_K")
    assert "model.layers.0.block_sparse_moe.gate" not in plan
    # Both experts of layer 0 are layer 0 (use_more_bits: Q6_K), layer 4 is not one of the more-bits layers.
    assert plan["model.layers.0.block_sparse_moe.experts.1.w2"] == ("Q6_K", "Q6_K")
    assert plan["model.layers.4.block_sparse_moe.experts.0.w2"] == ("Q4_K", "Q4_K")
    q3_k_l = GGUF_MIXES["Q3_K_L"]  # attn_output Q5_K, but with 8 experts llama.cpp leaves it at Q3_K
    assert q3_k_l.tensor_type(Role.ATTN_OUTPUT, 0, 32, 4096) is Q5_K
    assert q3_k_l.tensor_type(Role.ATTN_OUTPUT, 0, 32, 4096, n_expert=8) is Q3_K
    assert Q4_K_M.tensor_type("model.layers.0.self_attn.k_proj", 0, 32, 4096, n_expert=128) is Q4_K


def test_roles_layers_and_labels():
    assert role_of("model.layers.3.self_attn.v_proj.weight") is Role.ATTN_V
    assert role_of("blk.3.ffn_down.weight") is Role.FFN_DOWN
    assert role_of("transformer.h.0.attn.c_proj") is Role.ATTN_OUTPUT  # GPT-2: by its parent
    assert role_of("transformer.h.0.mlp.c_proj") is Role.FFN_DOWN
    assert role_of("model.layers.0.self_attn.qkv_proj") is Role.ATTN_QKV
    assert role_of("model.norm") is Role.OTHER
    assert layer_of("model.layers.12.mlp.experts.3.w2") == 12 and layer_of("lm_head") is None
    assert gguf_mix(" q4_k_m ") is Q4_K_M and Q4_K_M.label == "Q4_K_M" and Q4_K_M.base is Q4_K
    with pytest.raises(ValueError, match="not a llama.cpp file type here; use one of Q3_K_S"):
        gguf_mix("Q4_K_XL")
    with pytest.raises(ValueError, match="by layer"):
        Q4_K_M.tensor_type(Role.ATTN_V, None, 30, 576)
    # A legacy type the rules ask for that does not fit is refused, as llama.cpp refuses it.
    with pytest.raises(ValueError, match=r"blk\.0\.attn_v\.weight: Q8_0 packs rows in blocks of 32"):
        Q4_K_M.plan([("blk.0.attn_v.weight", 48)], 1, n_expert=8)
    with pytest.raises(ValueError, match="Q8_0 packs rows"):  # a head of rows of 48: Q8_0, which cannot
        Q4_K_M.tensor_type("lm_head", None, 1, 48)
