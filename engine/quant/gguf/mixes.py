"""llama.cpp's file-level mixes (Q3_K_S/M/L, Q4_K_S/M, Q5_K_S/M): which type each tensor of a model gets.

A `llama-quantize model.gguf Q4_K_M` file is not Q4_K throughout: llama.cpp picks a type per tensor from
its role (token embedding, output head, attention q / k / v / output, feed-forward gate / up / down), its
layer and the model's shape. These rules are written here as data after ggml-org/llama.cpp's
src/llama-quant.cpp at commit 007dbbf3fd17eefe9b47fee45f48f7ba5e62b714 (`llama_tensor_get_type_impl`,
`tensor_type_fallback`, `llama_ftype_get_default_type`); ours, not a copy of its code:

- the base type: Q3_K for Q3_K_*, Q4_K for Q4_K_*, Q5_K for Q5_K_*; every tensor without a rule gets it;
- the output head (and the token embedding when the head is tied to it): Q6_K, or Q8_0 when its rows are
  not a multiple of the base type's block (256); an untied token embedding gets the base type;
- attn_v (and a fused attn_qkv, which that commit treats as attn_v): Q4_K_M / Q5_K_M give Q6_K to the
  layers `use_more_bits` picks (the first eighth, the last eighth and every third layer between);
  Q4_K_S gives Q5_K to the first 4; Q3_K_M Q5_K to the first 2 and Q4_K to the rest; Q3_K_L Q5_K;
- ffn_down: Q4_K_M / Q5_K_M Q6_K on the `use_more_bits` layers; Q4_K_S Q5_K on the first eighth;
  Q3_K_M Q5_K on the first sixteenth and Q4_K elsewhere; Q3_K_L Q5_K;
- attn_output: Q3_K_M Q4_K, Q3_K_L Q5_K;
- models with exactly 8 experts (Mixtral): attn_v, attn_qkv and attn_k Q8_0, and attn_output Q5_K for
  Q3_K_S, Q3_K_M, Q4_K_S and Q4_K_M;
- MoE routers (ffn_gate_inp), norms and other 1-D tensors are not quantized (llama.cpp keeps them F32);
- then the per-tensor fallback when a row does not fit the type's blocks (`tensor_type` below):
  a k-quant falls back to a type with blocks of 32 (`FALLBACK`), F16 when not even those fit.

Not reproduced (they name architectures or sizes we do not size differently): Falcon's own rules, the
70B-only bump of attn_v to Q5_K, and the IQ / Q2_K mixes (their types are not implemented here). The
GQA conditions of llama.cpp (`n_gqa() >= 4`) only touch those IQ / Q2_K mixes, so none applies here.
The attention-v index and count are over attn_v-like tensors (a hybrid model's attention layers only),
as llama.cpp counts them; ffn_down's are over layers.

    mix = gguf_mix("q4_k_m")
    mix.tensor_type("model.layers.0.self_attn.v_proj", 0, 30, row_length=576)   # Q6_K, falls back to Q8_0
    mix.plan([(name, rows) ...], n_layers=30, tied=True)                        # every tensor at once
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from engine.quant.gguf import Q2_K, Q3_K, Q4_0, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0, GGUFType

# llama.cpp's per-tensor fallback when a row is not a multiple of the type's block (tensor_type_fallback).
# Current llama.cpp sends Q2_K and Q3_K to Q4_0 (some versions used IQ4_NL, a type not implemented here).
FALLBACK: dict[GGUFType, GGUFType] = {Q2_K: Q4_0, Q3_K: Q4_0, Q4_K: Q5_0, Q5_K: Q5_1, Q6_K: Q8_0}


def tensor_type(requested: GGUFType, row_length: int) -> GGUFType | None:
    """The type llama.cpp stores a tensor with rows of `row_length` in when asked for `requested`:
    requested if its blocks fit, else its fallback, else None (F16). ValueError for a legacy type that
    does not fit (llama.cpp has no fallback for those)."""
    if row_length % requested.block_size == 0:
        return requested
    fallback = FALLBACK.get(requested)
    if fallback is None:
        raise ValueError(
            f"{requested.name} packs rows in blocks of {requested.block_size} values and llama.cpp has no "
            f"fallback for it; rows of {row_length} values do not fit. Choose another type."
        )
    return fallback if row_length % fallback.block_size == 0 else None


class Role(enum.Enum):
    """A tensor's role as llama.cpp's rules see it (its GGUF name's category)."""

    TOKEN_EMBD = "token_embd"
    OUTPUT = "output"
    ATTN_Q = "attn_q"
    ATTN_K = "attn_k"
    ATTN_V = "attn_v"
    ATTN_QKV = "attn_qkv"
    ATTN_OUTPUT = "attn_output"
    FFN_GATE = "ffn_gate"
    FFN_UP = "ffn_up"
    FFN_DOWN = "ffn_down"
    ROUTER = "ffn_gate_inp"  # MoE router: never quantized
    OTHER = "other"


# Module names (the last part of a parameter's path) in Hugging Face models and GGUF -> role.
_ROLES: dict[str, Role] = {
    **dict.fromkeys(
        ("embed_tokens", "wte", "word_embeddings", "embed_in", "tok_embeddings", "token_embd"),
        Role.TOKEN_EMBD,
    ),
    **dict.fromkeys(("lm_head", "embed_out", "output"), Role.OUTPUT),
    **dict.fromkeys(("q_proj", "query", "wq", "attn_q"), Role.ATTN_Q),
    **dict.fromkeys(("k_proj", "key", "wk", "attn_k"), Role.ATTN_K),
    **dict.fromkeys(("v_proj", "value", "wv", "attn_v"), Role.ATTN_V),
    **dict.fromkeys(("qkv_proj", "c_attn", "query_key_value", "Wqkv", "attn_qkv"), Role.ATTN_QKV),
    **dict.fromkeys(("o_proj", "out_proj", "wo", "attn_output"), Role.ATTN_OUTPUT),
    **dict.fromkeys(("gate_proj", "w1", "ffn_gate", "ffn_gate_exps"), Role.FFN_GATE),
    **dict.fromkeys(("up_proj", "w3", "c_fc", "fc1", "dense_h_to_4h", "gate_up_proj"), Role.FFN_UP),
    **dict.fromkeys(("ffn_up", "ffn_up_exps"), Role.FFN_UP),
    **dict.fromkeys(("down_proj", "w2", "fc2", "dense_4h_to_h", "ffn_down", "ffn_down_exps"), Role.FFN_DOWN),
    **dict.fromkeys(("gate", "router", "ffn_gate_inp"), Role.ROUTER),
}
_ATTENTION_PARENT = re.compile(r"attn|attention", re.IGNORECASE)
_LAYER = re.compile(r"(?:^|\.)(\d+)\.")


def role_of(name: str) -> Role:
    """The role of a tensor from its name: 'model.layers.3.self_attn.v_proj(.weight)' or 'blk.3.attn_v.weight'."""
    parts = name.removesuffix(".weight").split(".")
    last = parts[-1]
    if last in ("c_proj", "dense"):  # GPT-2 / Falcon: the attention's output, or the MLP's down projection
        return Role.ATTN_OUTPUT if _ATTENTION_PARENT.search(".".join(parts[:-1])) else Role.FFN_DOWN
    return _ROLES.get(last, Role.OTHER)


def layer_of(name: str) -> int | None:
    """The block a tensor belongs to: the first number in its dotted name (None for embeddings, head)."""
    found = _LAYER.search(name)
    return int(found.group(1)) if found else None


def use_more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of layers for more bits: the first and last eighth, and every third between."""
    eighth = n_layers // 8
    return layer < eighth or layer >= 7 * n_layers // 8 or (layer - eighth) % 3 == 2


def _first_eighth(layer: int, n_layers: int) -> bool:
    return layer < n_layers // 8


def _first_sixteenth(layer: int, n_layers: int) -> bool:
    return layer < n_layers // 16


def _first_two(layer: int, n_layers: int) -> bool:
    return layer < 2


def _first_four(layer: int, n_layers: int) -> bool:
    return layer < 4


def _every(layer: int, n_layers: int) -> bool:
    return True


@dataclass(frozen=True)
class LayerRule:
    """`higher` on the layers `picks` chooses, `otherwise` elsewhere (None: the mix's base type)."""

    higher: GGUFType
    picks: Callable[[int, int], bool]  # (layer, n_layers) -> gets `higher`
    otherwise: GGUFType | None = None

    def type_for(self, layer: int, n_layers: int) -> GGUFType | None:
        return self.higher if self.picks(layer, n_layers) else self.otherwise


@dataclass(frozen=True)
class GGUFMix:
    """One llama.cpp file type: a base block type and the per-tensor rules that raise some tensors."""

    name: str  # "Q4_K_M", as llama-quantize names it
    base: GGUFType
    description: str
    attn_v: LayerRule | None = None
    ffn_down: LayerRule | None = None
    attn_output: GGUFType | None = None  # every layer's attn_output (models without 8 experts)
    attn_output_8_experts: GGUFType | None = None  # attn_output when the model has exactly 8 experts

    @property
    def label(self) -> str:
        return self.name

    def wanted_type(
        self,
        role: Role | str,
        layer: int | None = None,
        n_layers: int | None = None,
        *,
        n_expert: int = 0,
        tied: bool = False,
        row_length: int | None = None,
    ) -> GGUFType | None:
        """The type llama.cpp's rules ask for, before the row-length fallback; None: not quantized (a router).
        `role` is a Role or a tensor name; `layer` is the index among attn_v-like tensors for attn_v / qkv
        and among layers for ffn_down (from the name when not given); `tied`: the head is the embedding."""
        if isinstance(role, str):
            layer = layer_of(role) if layer is None else layer
            role = role_of(role)
        if role is Role.ROUTER:
            return None
        if role is Role.OUTPUT or (role is Role.TOKEN_EMBD and tied):
            if row_length is None:
                raise ValueError("the output head's type depends on its row length; give row_length")
            return Q8_0 if row_length % self.base.block_size else Q6_K
        eight = n_expert == 8
        if role in (Role.ATTN_V, Role.ATTN_QKV):
            return Q8_0 if eight else self._by_layer(self.attn_v, role, layer, n_layers)
        if role is Role.ATTN_K and eight:
            return Q8_0
        if role is Role.FFN_DOWN:
            return self._by_layer(self.ffn_down, role, layer, n_layers)
        if role is Role.ATTN_OUTPUT:
            return (self.attn_output_8_experts if eight else self.attn_output) or self.base
        return self.base

    def _by_layer(self, rule: LayerRule | None, role: Role, layer, n_layers) -> GGUFType:
        if rule is None:
            return self.base
        if layer is None or not n_layers or not 0 <= layer < n_layers:
            raise ValueError(
                f"{self.name} picks {role.value}'s type by layer: give its layer and layer count"
            )
        return rule.type_for(layer, n_layers) or self.base

    def tensor_type(
        self,
        role: Role | str,
        layer: int | None,
        n_layers: int | None,
        row_length: int,
        *,
        n_expert: int = 0,
        tied: bool = False,
    ) -> GGUFType | None:
        """The type the tensor is stored in: the rule's type, then llama.cpp's fallback for its rows
        (None: F16, or a router kept unquantized)."""
        wanted = self.wanted_type(role, layer, n_layers, n_expert=n_expert, tied=tied, row_length=row_length)
        return None if wanted is None else tensor_type(wanted, row_length)

    def plan(
        self, tensors: Iterable[tuple[str, int]], n_layers: int, *, n_expert: int = 0, tied: bool = False
    ) -> dict[str, tuple[GGUFType, GGUFType | None]]:
        """{name: (type asked for, type stored)} for every 2-D weight `(name, row length)` llama.cpp would
        quantize (routers left out), counting attn_v-like tensors and ffn_down as llama.cpp does: in layer
        order; MoE models (n_expert > 1) read ffn_down's layer from the name. ValueError names the tensor."""
        ordered = sorted(tensors, key=lambda item: (layer_of(item[0]) is not None, layer_of(item[0]) or 0))
        roles = {name: role_of(name) for name, _ in ordered}
        attn_v = [name for name in roles if roles[name] in (Role.ATTN_V, Role.ATTN_QKV)]
        downs = [name for name in roles if roles[name] is Role.FFN_DOWN]
        index = {name: i for i, name in enumerate(attn_v)}
        if n_expert <= 1:
            index |= {name: i for i, name in enumerate(downs)}
        plans = {}
        for name, rows in ordered:
            role = roles[name]
            count = len(attn_v) if role in (Role.ATTN_V, Role.ATTN_QKV) else n_layers
            try:
                wanted = self.wanted_type(
                    role,
                    index.get(name, layer_of(name)),
                    count,
                    n_expert=n_expert,
                    tied=tied,
                    row_length=rows,
                )
                if wanted is not None:
                    plans[name] = (wanted, tensor_type(wanted, rows))
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from exc
        return plans


GGUF_MIXES: dict[str, GGUFMix] = {
    m.name: m
    for m in (
        GGUFMix("Q3_K_S", Q3_K, "Q3_K throughout; head Q6_K", attn_output_8_experts=Q5_K),
        GGUFMix(
            "Q3_K_M", Q3_K, "Q3_K; attention v Q5_K on the first 2 layers and Q4_K after, attention output "
            "Q4_K, down projection Q5_K on the first sixteenth and Q4_K after; head Q6_K",
            attn_v=LayerRule(Q5_K, _first_two, Q4_K), ffn_down=LayerRule(Q5_K, _first_sixteenth, Q4_K),
            attn_output=Q4_K, attn_output_8_experts=Q5_K,
        ),
        GGUFMix(
            "Q3_K_L", Q3_K, "Q3_K; attention v, attention output and down projection Q5_K; head Q6_K",
            attn_v=LayerRule(Q5_K, _every), ffn_down=LayerRule(Q5_K, _every), attn_output=Q5_K,
        ),
        GGUFMix(
            "Q4_K_S", Q4_K, "Q4_K; attention v Q5_K on the first 4 layers, down projection Q5_K on the first "
            "eighth; head Q6_K",
            attn_v=LayerRule(Q5_K, _first_four), ffn_down=LayerRule(Q5_K, _first_eighth),
            attn_output_8_experts=Q5_K,
        ),
        GGUFMix(
            "Q4_K_M", Q4_K, "Q4_K; attention v and down projection Q6_K on half the layers (first and last "
            "eighth, every third between); head Q6_K",
            attn_v=LayerRule(Q6_K, use_more_bits), ffn_down=LayerRule(Q6_K, use_more_bits),
            attn_output_8_experts=Q5_K,
        ),
        GGUFMix("Q5_K_S", Q5_K, "Q5_K throughout; head Q6_K"),
        GGUFMix(
            "Q5_K_M", Q5_K, "Q5_K; attention v and down projection Q6_K on half the layers (first and last "
            "eighth, every third between); head Q6_K",
            attn_v=LayerRule(Q6_K, use_more_bits), ffn_down=LayerRule(Q6_K, use_more_bits),
        ),
    )
}  # fmt: skip
Q3_K_M, Q4_K_M, Q5_K_M = GGUF_MIXES["Q3_K_M"], GGUF_MIXES["Q4_K_M"], GGUF_MIXES["Q5_K_M"]


def gguf_mix(label: str) -> GGUFMix:
    """The mix for a label such as "Q4_K_M" or "q4_k_m" (the edge where text becomes a mix)."""
    found = GGUF_MIXES.get(label.strip().upper())
    if found is None:
        raise ValueError(f"{label!r} is not a llama.cpp file type here; use one of {', '.join(GGUF_MIXES)}.")
    return found


def expert_count(config) -> int:
    """Routed experts per layer from a (text) config: llama.cpp's n_expert (0 for dense models)."""
    for field in ("num_local_experts", "num_experts", "n_routed_experts"):
        value = getattr(config, field, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 1:
            return value
    return 0


__all__ = [
    "FALLBACK",
    "GGUF_MIXES",
    "GGUFMix",
    "LayerRule",
    "Q3_K_M",
    "Q4_K_M",
    "Q5_K_M",
    "Role",
    "expert_count",
    "gguf_mix",
    "layer_of",
    "role_of",
    "tensor_type",
    "use_more_bits",
]
