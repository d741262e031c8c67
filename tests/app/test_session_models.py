"""The server-wide budget for per-session models (issue 22): `BudgetedStore` keeps at most its budget in
bytes, frees the least recently used entries of any session first (ended sessions before live ones), says
which of a session's entries were freed, and refuses, freeing nothing, an entry over the whole budget. A
model's size is its parameters' and buffers' bytes, a shared tensor counted once."""

from __future__ import annotations

import threading

import torch
from torch import nn

from tests.conftest import build_tiny_llama
from ui.cache import session_models
from ui.cache.session_models import BudgetedStore, model_nbytes


def test_the_budget_is_respected_and_the_least_recently_used_go_first_across_sessions():
    store = BudgetedStore(budget=100)
    assert store.put("alice", "RTN", "a-rtn", 40)
    assert store.put("bob", "GPTQ", "b-gptq", 40)
    assert store.get("alice", "RTN") == "a-rtn"  # alice's is now the more recently used
    assert store.put("bob", "AWQ", "b-awq", 40)  # 120 > 100: bob's GPTQ, least recently used, goes
    assert store.total == 80 <= store.budget
    assert store.get("bob", "GPTQ") is None
    assert store.lru_keys() == [("alice", "RTN"), ("bob", "AWQ")]
    assert store.evicted("bob") == ["GPTQ"] and store.evicted("alice") == []
    assert store.put("alice", "QAT", "a-qat", 70)  # needs both others out
    assert store.lru_keys() == [("alice", "QAT")] and store.total == 70
    assert store.evicted("alice") == ["RTN"] and store.evicted("bob") == ["GPTQ", "AWQ"]


def test_holds_does_not_change_the_order_and_a_put_again_is_no_longer_evicted():
    store = BudgetedStore(budget=100)
    store.put("alice", "RTN", 1, 50)
    store.put("alice", "GPTQ", 2, 50)
    assert store.holds("alice", "RTN")  # a look, not a use: RTN stays the least recently used
    store.put("bob", "AWQ", 3, 50)
    assert not store.holds("alice", "RTN") and store.holds("alice", "GPTQ")
    assert store.evicted("alice") == ["RTN"]
    store.drop("bob")
    store.put("alice", "RTN", 4, 50)  # run again: kept again, no longer reported as freed
    assert store.get("alice", "RTN") == 4 and store.evicted("alice") == []
    store.put("alice", "RTN", 5, 20)  # a put under a held key replaces it, counted once
    assert store.total == 70 and store.get("alice", "RTN") == 5


def test_an_entry_over_the_whole_budget_is_refused_and_frees_nothing():
    store = BudgetedStore(budget=100)
    store.put("alice", "RTN", 1, 60)
    store.put("bob", "GPTQ", 2, 30)
    assert not store.put("bob", "AWQ", 3, 101)
    assert store.get("bob", "AWQ") is None
    assert store.lru_keys() == [("alice", "RTN"), ("bob", "GPTQ")] and store.evicted("alice") == []


def test_drop_forgets_without_reporting_and_ended_sessions_are_freed_first():
    alive = {"alice": True, "bob": True, "carol": True}
    store = BudgetedStore(budget=100, is_alive=lambda session: alive[session])
    store.put("carol", "RTN", 1, 30)
    store.put("bob", "RTN", 2, 30)
    store.put("bob", "GPTQ", 3, 30)
    store.drop("bob", "GPTQ")
    assert store.lru_keys() == [("carol", "RTN"), ("bob", "RTN")] and store.evicted("bob") == []
    store.put("alice", "RTN", 4, 30)
    alive["bob"] = False  # bob closed his tab: his model goes before carol's older one
    store.put("alice", "GPTQ", 5, 30)
    assert store.lru_keys() == [("carol", "RTN"), ("alice", "RTN"), ("alice", "GPTQ")]
    assert store.evicted("bob") == []  # nobody is left to tell
    store.drop("alice")
    assert store.lru_keys() == [("carol", "RTN")]


def test_concurrent_puts_never_exceed_the_budget():
    store = BudgetedStore(budget=1000)

    def fill(session):
        for index in range(200):
            store.put(session, index, object(), 7 + index % 13)
            store.get(session, index // 2)

    threads = [threading.Thread(target=fill, args=(name,)) for name in ("a", "b", "c", "d")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.total <= 1000
    assert store.total == sum(7 + name % 13 for _, name in store.lru_keys())


def test_a_models_size_counts_parameters_and_buffers_and_a_tied_tensor_once():
    model = build_tiny_llama()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert model_nbytes(model) == params + buffers
    tied = build_tiny_llama(tie_word_embeddings=True)
    embedding = tied.model.embed_tokens.weight
    assert tied.lm_head.weight.data_ptr() == embedding.data_ptr()
    assert model_nbytes(tied) == model_nbytes(model) - embedding.numel() * embedding.element_size()
    # two parameters viewing one storage (a split fused weight) count the storage once
    shared = nn.Module()
    fused = torch.zeros(8, 4)
    shared.first, shared.second = nn.Parameter(fused[:4]), nn.Parameter(fused[4:])
    assert model_nbytes(shared) == fused.numel() * fused.element_size()


def test_the_budget_comes_from_the_environment_or_a_share_of_ram(monkeypatch):
    monkeypatch.setenv(session_models.BUDGET_ENV, "512")
    assert session_models.budget_bytes() == 512 * 2**20
    monkeypatch.setenv(session_models.BUDGET_ENV, "lots")  # not a number: the default, not a crash
    monkeypatch.setattr(session_models, "total_ram", lambda: 8 * 2**30)
    assert session_models.budget_bytes() == 2 * 2**30  # 25% of 8 GiB
    monkeypatch.delenv(session_models.BUDGET_ENV)
    monkeypatch.setattr(session_models, "total_ram", lambda: 64 * 2**30)
    assert session_models.budget_bytes() == 4 * 2**30  # at most 4 GiB
    monkeypatch.setattr(session_models, "total_ram", lambda: None)
    assert session_models.budget_bytes() == 4 * 2**30


def test_a_lab_run_over_the_whole_budget_keeps_its_results_and_says_why_its_model_is_gone(monkeypatch):
    from engine.methods import RTNConfig, quantize_model
    from engine.quant.schemes import QuantScheme
    from ui.cache.method_runs import MethodRun

    quantized = quantize_model(build_tiny_llama(), RTNConfig(QuantScheme(4, "int", False, "group", 32)))
    size = model_nbytes(quantized.model)  # 355 KiB
    store = BudgetedStore(budget=size - 1)
    monkeypatch.setattr(session_models, "_STORE", store)
    store.put("other", "RTN", "kept", 100)
    run = MethodRun.keep("RTN int4", "RTN", quantized, None, 1.0, session="me")
    assert not run.kept and run.quantized is None
    assert run.bits_per_weight == quantized.bits_per_weight and run.layers == quantized.layers
    assert store.lru_keys() == [("other", "RTN")]  # nothing freed for a model that could never fit
    assert "(355.3 KiB) is larger than the server's memory budget for kept models (355.3 KiB)" in run.missing
    model, why = run.held()
    assert model is None and why == run.missing
    store.budget = 2 * size
    again = MethodRun.keep("RTN int4", "RTN", quantized, None, 1.0, session="me")
    assert again.kept and again.missing is None and again.quantized is quantized
    store.put("other", "AWQ", "newer", size + 1)  # frees the least recently used: "other"'s RTN, then this
    assert again.quantized is None and "was freed to make room" in again.missing
    assert store.evicted("me") == ["RTN int4"] and store.evicted("other") == ["RTN"]
