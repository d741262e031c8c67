"""GGUF export (engine.models.gguf_export): the file llama.cpp runs, read back by transformers and gguf.

- The default model at Q4_K (mostly Q5_0 on SmolLM2's 576-long rows) and at Q8_0 with its embedding: the
  file loads through transformers' GGUF loader (which dequantizes with the gguf package and undoes the q/k
  row permutation) with every linear weight equal to our fake-quantized one and the same logits;
  gguf.GGUFReader sees our types under llama.cpp's names and the source's metadata.
- A Hugging Face folder (no .gguf behind it): the tokenizer comes from tokenizer.json, the same tokens,
  types and merges llama.cpp's own conversion of SmolLM2 holds; a tiny GQA Llama round-trips.
- Bad input: a format without a GGUF type, a weight changed after quantizing, a tokenizer that is not
  BPE, another architecture: each an ExportError, nothing written.
"""

from __future__ import annotations

import shutil
from collections import Counter

import gguf
import pytest
import torch
from gguf import MODEL_ARCH, GGMLQuantizationType, LlamaFileType

from engine.methods import GGUFConfig, RTNConfig, quantize_model
from engine.models.export import ExportError, available_formats, export_model
from engine.models.gguf_export import NO_GGUF_TYPE, GGUFSource, bpe_vocab, llama_permute
from engine.models.sources import default_gguf_path
from engine.quant.gguf import Q4_0, Q4_K, Q5_0, Q8_0, quantize
from engine.quant.gguf.mixes import gguf_mix
from engine.quant.linear import linear_names
from engine.quant.schemes import QuantScheme
from tests.conftest import build_char_tokenizer, build_tiny_llama

PROMPT = "The capital of France is"
# k-quant searches on two shared cores: one torch thread is ~10x faster than two contending (13 s vs 150 s)
pytestmark = pytest.mark.usefixtures("single_thread")


def load_back(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def read(path) -> tuple[dict, dict]:
    """(metadata {key: value}, tensors {name: ReaderTensor}) of a .gguf; one parse (seconds with a vocab)."""
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items()}, {t.name: t for t in reader.tensors}


@pytest.fixture(scope="module")
def original() -> dict:
    """The metadata of the .gguf the default model was converted from (llama.cpp's own conversion)."""
    return read(default_gguf_path())[0]


@pytest.fixture(scope="module")
def source(default_loaded) -> GGUFSource:
    return GGUFSource(default_loaded.model, default_loaded.folder)


@pytest.fixture(scope="module")
def q4_k(default_loaded):
    return quantize_model(default_loaded.model, GGUFConfig(Q4_K))


@pytest.fixture(scope="module")
def q4_k_file(q4_k, source, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf-q4_k")
    result = export_model(q4_k, folder, "gguf", source=source)
    return folder / next(iter(result.files))


def test_default_model_q4_k_falls_back_to_q5_0_on_576_rows(q4_k, default_loaded):
    """The GGUF method on the default model (shared with the export below): 576-long rows are no multiple
    of 256, so llama.cpp stores those tensors as Q5_0; the model's bits per weight are weighted by size."""
    from engine.quant.gguf import fake_quantize
    from engine.sizing.packed import packed_weight_bytes

    model = default_loaded.model
    types = {r.name: r.detail.used_name for r in q4_k.layers}
    down = [name for name in types if name.endswith("mlp.down_proj")]
    assert len(down) == 30 and all(types[name] == "Q4_K" for name in down)
    assert all(t == "Q5_0" for name, t in types.items() if name not in down) and len(types) == 210
    by_name = {r.name: r for r in q4_k.layers}
    assert {r.bits_per_weight for r in q4_k.layers if r.name in down} == {4.5}
    assert {r.bits_per_weight for r in q4_k.layers if r.name not in down} == {5.5}
    # Weighted by size: per block q 576x576, k and v 192x576, o 576x576, gate and up 1536x576, down 576x1536.
    originals = {name: model.get_submodule(name).weight for name in linear_names(model)}
    counts = {name: w.numel() for name, w in originals.items()}
    by_hand = sum(by_name[n].bits_per_weight * c for n, c in counts.items()) / sum(counts.values())
    assert by_hand == pytest.approx(5.25) and q4_k.bits_per_weight == pytest.approx(by_hand)
    bits = sum(round(by_name[n].bits_per_weight * c / 8) for n, c in counts.items())
    assert packed_weight_bytes(q4_k) == packed_weight_bytes(model) - sum(counts.values()) * 4 + bits
    for name, t in (("model.layers.0.mlp.down_proj", Q4_K), ("model.layers.0.self_attn.k_proj", Q5_0)):
        assert torch.equal(q4_k.model.get_submodule(name).weight, fake_quantize(originals[name], t))


def test_q4_k_loads_back_in_transformers_with_our_weights_and_logits(q4_k, q4_k_file, default_loaded):
    back = load_back(q4_k_file)
    for name in linear_names(q4_k.model):  # packed from the reference, dequantized by gguf-py: our values
        ours = q4_k.model.get_submodule(name).weight
        torch.testing.assert_close(back.get_submodule(name).weight, ours, rtol=1e-6, atol=1e-6)
    embedding = q4_k.model.get_input_embeddings().weight  # not quantized by the method: stored F16
    assert torch.equal(back.get_input_embeddings().weight, embedding.half().float())
    ids = default_loaded.tokenizer(PROMPT, return_tensors="pt").input_ids
    ours, theirs = logits(q4_k.model, ids), logits(back, ids)
    assert (ours - theirs).abs().max() < 0.05  # the F16 embedding's rounding only
    assert torch.equal(ours[0, -1].argmax(), theirs[0, -1].argmax())


def test_the_file_holds_our_types_under_llama_cpp_names_and_the_sources_metadata(
    q4_k, q4_k_file, source, original
):
    assert q4_k_file.name == "SmolLM2-135M-Instruct-Q4_K.gguf"
    meta, tensors = read(q4_k_file)
    names = gguf.get_tensor_name_map(MODEL_ARCH.LLAMA, 30)
    for report in q4_k.layers:
        packed = tensors[names.get_name(report.name) + ".weight"]
        assert packed.tensor_type == GGMLQuantizationType(report.detail.used.ggml_id), report.name
    kinds = Counter(t.tensor_type.name for t in tensors.values())
    assert kinds == {"Q5_0": 180, "Q4_K": 30, "F32": 61, "F16": 1}  # 576-long rows fall back to Q5_0
    assert tensors["token_embd.weight"].tensor_type == GGMLQuantizationType.F16
    assert "output.weight" not in tensors  # tied: llama.cpp reads token_embd
    # q rows in llama.cpp's rope order: the bytes of the permuted reference weight, 9 heads
    q_ref = source.reference.get_parameter("model.layers.0.self_attn.q_proj.weight").detach()
    expected = quantize(llama_permute(q_ref, 9), Q5_0).numpy()
    assert (tensors["blk.0.attn_q.weight"].data.reshape(expected.shape) == expected).all()
    assert meta["general.file_type"] == LlamaFileType.MOSTLY_Q4_K_S
    for key in (
        "general.name",
        "llama.attention.head_count_kv",
        "tokenizer.ggml.pre",
        "tokenizer.chat_template",
    ):
        assert meta[key] == original[key], key
    assert meta["tokenizer.ggml.tokens"] == original["tokenizer.ggml.tokens"]
    assert meta["tokenizer.ggml.merges"] == original["tokenizer.ggml.merges"]


# --- a Hugging Face folder: metadata from config.json and tokenizer.json -------------------------------


@pytest.fixture(scope="module")
def hf_folder(default_loaded, tmp_path_factory):
    """The default model's tokenizer files, without the .gguf behind them (no qe_conversion.json)."""
    folder = tmp_path_factory.mktemp("hf") / "smollm2-hf"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (default_loaded.folder / name).is_file():
            shutil.copy(default_loaded.folder / name, folder / name)
    return folder


def test_a_bpe_tokenizer_json_gives_llama_cpps_tokens_types_and_merges(hf_folder, tmp_path, original):
    tokens, kinds = bpe_vocab(hf_folder, 49152)
    assert tokens == original["tokenizer.ggml.tokens"]
    assert kinds == original["tokenizer.ggml.token_type"]
    tiny = build_tiny_llama(vocab_size=49152)  # GQA: 4 heads, 2 kv heads
    quantized = quantize_model(tiny, GGUFConfig(Q4_0))
    export_model(quantized, tmp_path, "gguf", source=GGUFSource(tiny, hf_folder))
    path = tmp_path / "smollm2-hf-Q4_0.gguf"
    meta = read(path)[0]
    assert meta["tokenizer.ggml.model"] == "gpt2"
    for key in ("tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        assert meta[key] == original[key], key
    assert (meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]) == (4, 2)
    back = load_back(path)
    for name in linear_names(quantized.model):
        ours = quantized.model.get_submodule(name).weight
        torch.testing.assert_close(back.get_submodule(name).weight, ours, rtol=1e-6, atol=1e-6, msg=name)
    ids = torch.tensor([[1, 200, 3000, 45000, 7]])
    assert (logits(quantized.model, ids) - logits(back, ids)).abs().max() < 1e-2  # F16 embedding, head


def test_q8_0_with_the_tied_embedding_reproduces_the_model(hf_folder, tmp_path):
    """A legacy type on every tensor, the tied embedding too (llama.cpp then reads the head from it)."""
    tiny = build_tiny_llama(vocab_size=49152, tie_word_embeddings=True)
    q8 = quantize_model(tiny, GGUFConfig(Q8_0, include_embeddings=True))
    result = export_model(q8, tmp_path, "gguf", source=GGUFSource(tiny, hf_folder))
    path = tmp_path / "smollm2-hf-Q8_0.gguf"
    assert list(result.files) == [path.name]
    tensors = read(path)[1]
    assert Counter(t.tensor_type.name for t in tensors.values()) == {"Q8_0": 15, "F32": 5}
    assert "output.weight" not in tensors
    back = load_back(path)
    ours = dict(q8.model.named_parameters())
    for name, weight in back.named_parameters():  # every tensor, the embedding too: exactly ours
        torch.testing.assert_close(weight, ours[name], rtol=1e-6, atol=1e-6, msg=name)
    ids = torch.tensor([[1, 200, 3000, 45000, 7]])
    assert (logits(q8.model, ids) - logits(back, ids)).abs().max() < 1e-3


def test_any_llama_model_can_be_written_in_f16(hf_folder, tmp_path):
    tiny = build_tiny_llama(vocab_size=49152)
    rtn = quantize_model(tiny, RTNConfig(QuantScheme(4, "int", False, "group", 32)))
    assert available_formats(rtn)["gguf"] == NO_GGUF_TYPE
    assert available_formats(rtn)["gguf_f16"] is None
    result = export_model(rtn, tmp_path, "gguf_f16", source=GGUFSource(tiny, hf_folder))
    path = tmp_path / next(iter(result.files))
    assert path.name == "smollm2-hf-F16.gguf"
    meta, tensors = read(path)
    assert meta["general.file_type"] == LlamaFileType.MOSTLY_F16
    names = gguf.get_tensor_name_map(MODEL_ARCH.LLAMA, 2)
    for name in linear_names(tiny):  # our fake-quantized weights as float16, q and k in rope order
        weight = rtn.model.get_submodule(name).weight.detach().half()
        heads = {"q_proj": 4, "k_proj": 2}.get(name.rpartition(".")[2])
        expected = llama_permute(weight, heads) if heads else weight
        packed = tensors[names.get_name(name) + ".weight"]
        assert packed.tensor_type == GGMLQuantizationType.F16
        assert (packed.data.reshape(expected.shape) == expected.numpy()).all(), name


def test_a_file_level_mix_keeps_each_tensors_type_and_names_its_file_type(hf_folder, tmp_path):
    tiny = build_tiny_llama(vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=3)
    mixed = quantize_model(tiny, GGUFConfig(gguf_mix("Q4_K_M")))
    export_model(mixed, tmp_path, "gguf", source=GGUFSource(tiny, hf_folder))
    path = tmp_path / "smollm2-hf-Q4_K_M.gguf"
    meta, tensors = read(path)
    assert meta["general.file_type"] == LlamaFileType.MOSTLY_Q4_K_M
    names = gguf.get_tensor_name_map(MODEL_ARCH.LLAMA, 3)
    recorded = {names.get_name(r.name) + ".weight": r.detail.used.ggml_id for r in mixed.layers}
    assert {name: tensors[name].tensor_type for name in recorded} == recorded
    assert len(set(recorded.values())) > 1  # Q6_K on attn_v / ffn_down of some layers, Q4_K elsewhere


# --- bad input: a clear message, nothing written ----------------------------------------------------------


def test_a_format_without_a_gguf_type_is_refused_and_nothing_is_written(tmp_path):
    tiny = build_tiny_llama()
    rtn = quantize_model(tiny, RTNConfig(QuantScheme(4, "int", False, "group", 32)))
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="has no GGUF type; quantize it with the GGUF method"):
        export_model(rtn, out, "gguf", source=GGUFSource(tiny, tmp_path))
    assert not out.exists()


def test_a_weight_changed_after_quantizing_is_refused(tmp_path):
    tiny = build_tiny_llama()
    quantized = quantize_model(tiny, GGUFConfig(Q4_0))
    with torch.no_grad():
        quantized.model.model.layers[1].mlp.up_proj.weight[0, 0] += 0.01
    with pytest.raises(ExportError, match="up_proj.*do not reproduce this model's weight"):
        export_model(quantized, tmp_path, "gguf", source=GGUFSource(tiny, tmp_path))
    assert not list(tmp_path.iterdir())


def test_a_tokenizer_that_is_not_bpe_is_refused(tmp_path):
    tiny = build_tiny_llama()
    build_char_tokenizer().save_pretrained(tmp_path / "tiny")
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="its tokenizer is WordLevel; GGUF export writes BPE tokenizers"):
        export_model(tiny, out, "gguf_f16", source=GGUFSource(tiny, tmp_path / "tiny"))
    assert not list(out.iterdir())  # the partial file is removed


def test_other_architectures_are_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=32))
    why = available_formats(gpt2)
    assert (
        why["gguf"]
        == why["gguf_f16"]
        == "GGUF export is written for llama models only here (this one is gpt2)"
    )
