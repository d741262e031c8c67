"""Shared fixtures: a tiny random Llama saved as a real Hugging Face folder (cheap), and the default model."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

# Under pytest-xdist (`make test` runs three workers), each worker gets its share of the cores (at least one
# thread): workers each starting two OpenMP threads on two cores would spend their time in barrier waits.
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))

CHARS = list(" abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-:;()\n")


def checksum(model) -> str:
    """SHA-256 of every tensor's name and raw bytes: any change to a weight or buffer changes it."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def build_char_tokenizer():
    """A character-level fast tokenizer: enough for generation and perplexity logic, no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for char in CHARS:
        vocab.setdefault(char, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


def build_tiny_llama(seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    settings = dict(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    settings.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**settings)).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with a char tokenizer, saved with safetensors."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_llama().save_pretrained(folder)
    build_char_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def pickle_only_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pickle-only")
    model = build_tiny_llama()
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    build_char_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def default_loaded():
    """The real offline default model (SmolLM2-135M-Instruct), loaded once for the whole run."""
    from engine.models.loading import load_model
    from engine.models.sources import ModelSource

    return load_model(ModelSource())


def write_config(folder: Path, config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.fixture
def single_thread():
    """Run a test on one torch thread, then restore the count.

    The core's tests use small tensors, where two OpenMP threads gain nothing, and on a machine shared
    with other CPU-heavy jobs their barrier waits made the suite ~4x slower (47 s instead of 13 s).
    Opt in per module with `pytestmark = pytest.mark.usefixtures("single_thread")`.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The longest test modules, longest first (seconds on the 2-core machine, measured with --durations). `make
# test` hands whole modules to the xdist workers (--dist loadscope) in collection order (with
# --no-loadscope-reorder: xdist would otherwise put the modules with the most tests first, and these two-test
# modules last); a long module handed out last leaves one worker running it alone at the end. Collecting
# these first lets the short ones fill in around them (longest-first scheduling).
LONGEST_FIRST = (
    "tests/engine/methods/test_crosscheck_gptqmodel_awq.py",
    "tests/engine/methods/test_gptq.py",
    "tests/engine/planner/test_planner_default_model.py",
    "tests/app/test_sessions.py",
    "tests/engine/models/test_gguf_export.py",
    "tests/engine/methods/test_crosscheck_gptqmodel.py",
    "tests/app/test_methods_page.py",
    "tests/engine/methods/test_awq.py",
    "tests/e2e/test_dashboard.py",
    "tests/test_memory_growth.py",
    "tests/app/test_scheme_sidebar.py",
    "tests/app/test_outliers_page.py",
    "tests/e2e/test_outliers_browser.py",
    "tests/app/test_outliers_origin.py",
    "tests/app/test_links.py",
    "tests/app/test_compare_page.py",
    "tests/e2e/test_tour_browser.py",
    "tests/app/test_presenter.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {path: index for index, path in enumerate(LONGEST_FIRST)}
    root = Path(config.rootpath)

    def order(item):
        path = Path(str(item.fspath)).relative_to(root).as_posix()
        return rank.get(path, len(rank))

    items.sort(key=order)  # stable: within a module, and among the rest, the usual order
