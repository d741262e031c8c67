"""A planned recipe exported as one mixed-type .gguf (engine.models.gguf_export with PlannedConfig): each
tensor in its own type under llama.cpp's name, packed bytes that gguf-py dequantizes to our fake-quantized
weights, the file type of the type covering the most weights; a recipe with a format llama.cpp has no
type for is refused, naming the tensor, with nothing written."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import MODEL_ARCH, GGMLQuantizationType, LlamaFileType

from engine.methods import quantize_model
from engine.models.export import ExportError, available_formats, export_model
from engine.models.gguf_export import GGUFSource, llama_permute
from engine.planner import PlannedConfig, planned_tensors
from engine.planner.recipe import recipe_from_formats
from engine.quant.gguf import Q4_0, Q5_0, Q8_0
from engine.quant.schemes import parse_label
from tests.conftest import build_tiny_llama

pytestmark = pytest.mark.usefixtures("single_thread")
BY_MODULE = {"gate_proj": Q4_0, "up_proj": Q4_0, "down_proj": Q8_0}  # attention: Q5_0


def test_a_mixed_recipe_writes_each_tensors_type_and_our_weights(default_loaded, tmp_path):
    """The last 8 layers planned (as the page's quick look does; the others stay F16), to stay fast."""
    model = default_loaded.model
    tensors = [t for t in planned_tensors(model) if t.layer >= 22]
    formats = {t.name: BY_MODULE.get(t.module, Q5_0) for t in tensors}
    recipe = recipe_from_formats("planner at 5.50 bpw", tensors, formats)
    planned = quantize_model(model, PlannedConfig.from_recipe(recipe))
    assert available_formats(planned)["gguf"] is None
    result = export_model(planned, tmp_path, "gguf", source=GGUFSource(model, default_loaded.folder))
    label = f"planned-{recipe.bits_per_weight:.2f}bpw"
    path = tmp_path / next(iter(result.files))
    assert path.name == f"SmolLM2-135M-Instruct-{label}.gguf"
    reader = gguf.GGUFReader(path)
    packed = {t.name: t for t in reader.tensors}
    # gate and up (2 x 1536 x 576 a layer) cover the most weights, though q_proj (Q5_0) comes first
    assert reader.fields["general.file_type"].contents() == LlamaFileType.MOSTLY_Q4_0
    names = gguf.get_tensor_name_map(MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    heads = {"q_proj": model.config.num_attention_heads, "k_proj": model.config.num_key_value_heads}
    for tensor in tensors:
        found = packed[names.get_name(tensor.name) + ".weight"]
        assert found.tensor_type == GGMLQuantizationType(formats[tensor.name].ggml_id), tensor.name
        ours = planned.model.get_submodule(tensor.name).weight.detach()
        ours = llama_permute(ours, heads[tensor.module]) if tensor.module in heads else ours
        values = gguf.quants.dequantize(found.data, found.tensor_type).reshape(ours.shape)
        assert np.array_equal(values, ours.numpy()), tensor.name
    assert packed["blk.0.ffn_up.weight"].tensor_type == GGMLQuantizationType.F16  # not planned
    assert packed["token_embd.weight"].tensor_type == GGMLQuantizationType.F16  # embeddings stay F16
    assert packed["blk.0.attn_norm.weight"].tensor_type == GGMLQuantizationType.F32


def test_a_format_without_a_llama_cpp_type_is_refused_naming_the_tensor(tmp_path):
    tiny = build_tiny_llama()
    tensors = planned_tensors(tiny)
    formats = {t.name: Q4_0 for t in tensors} | {"model.layers.1.mlp.down_proj": parse_label("int3 g32")}
    planned = quantize_model(tiny, PlannedConfig.from_recipe(recipe_from_formats("r", tensors, formats)))
    why = "model.layers.1.mlp.down_proj is int3 g32, which llama.cpp has no type for; plan with the llama.cpp"
    assert available_formats(planned)["gguf"].startswith(why)
    assert available_formats(planned)["gguf_f16"] is None
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=why):
        export_model(planned, out, "gguf", source=GGUFSource(tiny, tmp_path))
    assert not out.exists()
    formats = dict.fromkeys(formats, parse_label("int3 g32"))
    planned = quantize_model(tiny, PlannedConfig.from_recipe(recipe_from_formats("r", tensors, formats)))
    assert "(and 11 more), formats llama.cpp has no type for" in available_formats(planned)["gguf"]
    assert torch.equal(tiny.lm_head.weight, planned.model.lm_head.weight)
