"""Which GPUs run each weight format natively: the catalog's architectures against NATIVE_FORMATS."""

from __future__ import annotations

import pytest

from engine.quant.schemes import QuantScheme
from engine.sizing.gpus import (
    EMULATED,
    NATIVE,
    NATIVE_FORMATS,
    WEIGHT_ONLY,
    all_devices,
    gpu,
    gpu_catalog,
    native_support,
)
from engine.sizing.presets import PRESETS


def test_every_catalog_gpu_names_a_known_architecture():
    for device in all_devices():
        assert device.architecture in NATIVE_FORMATS, device.name
    assert {d.architecture for d in gpu_catalog()} >= {"Turing", "Ampere", "Ada", "Hopper", "Blackwell"}


def test_hopper_runs_fp8_natively_but_not_the_fp4_block_formats():
    h100 = gpu("H100 80GB SXM")
    assert native_support(h100, PRESETS["fp8"]) == NATIVE
    assert native_support(h100, PRESETS["mxfp8"]) == EMULATED  # E8M0 block scales arrive with Blackwell
    assert native_support(h100, PRESETS["mxfp4"]) == EMULATED
    assert native_support(h100, PRESETS["nvfp4"]) == EMULATED


@pytest.mark.parametrize("name", ["B200", "RTX 5090"])  # sm_100 and sm_120
def test_blackwell_runs_nvfp4_and_mx_formats_natively(name):
    device = gpu(name)
    assert device.architecture == "Blackwell"
    for preset in ("nvfp4", "mxfp4", "mxfp8", "fp8", "int8"):
        assert native_support(device, PRESETS[preset]) == NATIVE, preset
    assert native_support(device, QuantScheme.from_label("mxfp6_e3m2")) == NATIVE


def test_ampere_has_int8_tensor_cores_but_no_fp8():
    a100 = gpu("A100 80GB")
    assert native_support(a100, PRESETS["fp8"]) == EMULATED
    assert native_support(a100, "fp8_e5m2 channel") == EMULATED  # a scheme label works too
    assert native_support(a100, PRESETS["int8"]) == NATIVE
    assert native_support(a100, PRESETS["bf16"]) == NATIVE
    assert native_support(gpu("RTX 4090"), PRESETS["fp8"]) == NATIVE  # Ada (sm_89) has FP8


def test_apple_runs_no_fp8_or_fp4_natively():
    mac = gpu("M4 Pro")
    assert native_support(mac, PRESETS["fp8"]) == EMULATED
    assert native_support(mac, PRESETS["nvfp4"]) == EMULATED
    assert native_support(mac, PRESETS["int8"]) == WEIGHT_ONLY  # no int8 matrix units: dequantized


@pytest.mark.parametrize("preset", ["int4-g128", "gptq-int4-g128", "nf4", "Q4_K_M", "Q8_0"])
def test_low_bit_integer_and_gguf_weights_are_weight_only_everywhere(preset):
    assert {native_support(device, PRESETS[preset]) for device in all_devices()} == {WEIGHT_ONLY}
    assert native_support(gpu("B200"), QuantScheme.from_label("int4 g128")) == WEIGHT_ONLY


def test_an_unknown_object_is_refused():
    with pytest.raises(TypeError, match="WeightPreset"):
        native_support(gpu("H100 80GB SXM"), 4)
