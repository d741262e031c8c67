"""Offload: how many layers fit on my GPU, and how fast does the rest decode from CPU memory?

Three ways to run a model larger than the GPU (`OFFLOAD_MODES`, one class each):
- `LayersOnCPU`, llama.cpp's `-ngl`: the CPU holds and computes the first layers, the GPU the last ones.
  The rule, from llama.cpp `src/llama-model.cpp` (`load_tensors`): `i_gpu_start = max(n_layer + 1 -
  n_gpu_layers, 0)` over n_layer + 1 slots where the last slot is the output layer (final norm and head);
  the input embedding always stays on the CPU ("there is very little benefit to offloading the input
  layer"); each layer's KV cache sits on its layer's device (`offload_kqv`, on by default). So N layers on
  the GPU is `-ngl N+1`: the last N repeating layers plus the output layer (N = 0 is `-ngl 0`).
- `ExpertsOnCPU`, llama.cpp's `--n-cpu-moe K` / `--cpu-moe` (`-ot exps=CPU`): everything on the GPU but
  the routed experts of the first K layers; a token reads only the experts it visits, from host memory.
- `StreamedOverPCIe`, transformers / accelerate `device_map="auto"` with CPU offload: the embedding and the
  first N layers stay on the GPU (accelerate fills devices in module order), the rest (head included until
  every layer fits) wait in CPU RAM and are copied to the GPU at every forward: every token moves all
  their bytes, every expert included, over PCIe. accelerate reserves room for the largest layer on the GPU
  to copy into; computation and the KV cache stay on the GPU.

Decode time per token is the sum, over the places bytes are read from, of bytes / that place's bandwidth
(GPU memory, host memory, PCIe): a roofline with no overlap between the parts, at datasheet bandwidths.
Where we simplify: one repeating layer's weights are (weights - embeddings - head) / layers, a uniform
split (MoE models whose first layers are dense, such as DeepSeek-V3's first three, are the exception);
its KV is `breakdown.kv_by_layer` when the estimate has it, else the cache split by the tokens each layer
keeps (sliding windows cap theirs). Routed experts are priced at the weights' "routed_experts" bytes when
the estimate splits them out, else at the MLP's average bytes per parameter, as `decode_bytes_per_token`
does. Activations and the framework overhead are on the GPU in every mode
(llama.cpp prefills on the GPU even at `-ngl 0`). A tied head is read from the embedding matrix (llama.cpp
keeps a copy of it on the output layer's device).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.sizing.estimate import ConfigError, MemoryBreakdown, _positive_int, _text_config, layer_windows
from engine.sizing.gpus import GPU


@dataclass(frozen=True)
class Link:
    """A memory or bus a part of the model is read through, at its datasheet bandwidth."""

    name: str
    bandwidth: float  # bytes/s, peak
    source: str = ""


# MT/s x 8 bytes per 64-bit channel x channels (JEDEC DDR4 / DDR5 transfer rates)
HOST_MEMORY = (
    Link("DDR4-3200, dual channel (desktop)", 51.2e9, "3200 MT/s x 8 B x 2 channels"),
    Link("DDR5-5600, dual channel (desktop)", 89.6e9, "5600 MT/s x 8 B x 2 channels"),
    Link("DDR5-4800, 8 channels (server)", 307.2e9, "4800 MT/s x 8 B x 8 channels (Xeon Sapphire Rapids)"),
    Link("DDR5-4800, 12 channels (server)", 460.8e9, "4800 MT/s x 8 B x 12 channels (EPYC Genoa)"),
)
# per direction: lanes x GT/s x 128/130 encoding / 8 bits (PCI-SIG base specifications 3.0, 4.0, 5.0)
PCIE = (
    Link("PCIe 3.0 x16", 15.75e9, "16 lanes x 8 GT/s x 128/130 / 8"),
    Link("PCIe 4.0 x16", 31.5e9, "16 lanes x 16 GT/s x 128/130 / 8"),
    Link("PCIe 5.0 x16", 63.0e9, "16 lanes x 32 GT/s x 128/130 / 8"),
)
# Apple silicon is left out on purpose: its GPU and CPU share one unified memory, so nothing is offloaded.


@dataclass(frozen=True)
class Host:
    """The computer around the GPU: RAM the model may use, its bandwidth, and the GPU's PCIe link."""

    ram_bytes: float
    memory_bandwidth: float = HOST_MEMORY[1].bandwidth  # bytes/s
    pcie_bandwidth: float = PCIE[1].bandwidth  # bytes/s, one direction

    def __post_init__(self) -> None:
        for name in ("ram_bytes", "memory_bandwidth", "pcie_bandwidth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"host {name.replace('_', ' ')} must be a positive number (got {value!r})")


@dataclass(frozen=True)
class ModelParts:
    """A breakdown cut into what can move: per-layer weights and KV, experts, embedding and output."""

    layers: int
    layer_weights: float  # bytes of one repeating layer, all its experts included
    layer_inactive: float  # bytes of one layer's routed experts a token does not visit
    layer_experts: float  # bytes of one layer's routed experts (0 for dense models)
    kv_by_layer: tuple[float, ...]  # bytes of each layer's KV cache (batch x context)
    embeddings: float  # the input embedding table (a token reads one row: not counted as read)
    output: float  # bytes of the untied head (0 when tied)
    output_read: float  # bytes the head reads per token: the head, or the embedding matrix when tied
    gpu_fixed: float  # activations peak + framework overhead, on the GPU in every mode

    def layer_read(self, index: int) -> float:
        """Bytes one decode step reads from layer `index`: its weights but unvisited experts, its KV."""
        return self.layer_weights - self.layer_inactive + self.kv_by_layer[index]

    def layer_bytes(self, index: int) -> float:
        return self.layer_weights + self.kv_by_layer[index]


def _kv_by_layer(breakdown: MemoryBreakdown, config, layers: int) -> tuple[float, ...]:
    given = getattr(breakdown, "kv_by_layer", None)
    if given is not None and len(given) == layers:
        return tuple(float(b) for b in given)
    tokens = [breakdown.context if w is None else min(breakdown.context, w) for w in layer_windows(config)]
    total = sum(tokens)
    state = getattr(breakdown, "state", 0.0) / layers  # a recurrent state, if any: spread evenly
    return tuple((breakdown.kv_cache * t / total if total else 0.0) + state for t in tokens)


def model_parts(breakdown: MemoryBreakdown, config) -> ModelParts:
    text = _text_config(config)
    layers = _positive_int(text, "num_hidden_layers")
    by_kind, counts = breakdown.weights.by_kind, breakdown.parameters
    embeddings, head = by_kind.get("embeddings", 0.0), by_kind.get("head", 0.0)
    expert_bytes_per_param = 0.0
    if counts.experts and counts.routed_experts and "routed_experts" in by_kind:  # priced by module kind
        expert_bytes_per_param = by_kind["routed_experts"] / counts.routed_experts
    elif counts.experts and counts.by_kind.get("mlp"):  # as decode_bytes_per_token: the MLP's average
        expert_bytes_per_param = by_kind["mlp"] / counts.by_kind["mlp"]
    experts = counts.routed_experts * expert_bytes_per_param
    inactive = (counts.total - counts.active) * expert_bytes_per_param
    return ModelParts(
        layers=layers,
        layer_weights=(breakdown.weights.total - embeddings - head) / layers,
        layer_inactive=inactive / layers,
        layer_experts=experts / layers,
        kv_by_layer=_kv_by_layer(breakdown, text, layers),
        embeddings=embeddings,
        output=head,
        output_read=head if "head" in by_kind else embeddings,
        gpu_fixed=breakdown.activations.peak + breakdown.overhead,
    )


@dataclass(frozen=True)
class Placement:
    """Where the bytes sit and where each decode step reads them from."""

    gpu_bytes: float
    cpu_bytes: float
    gpu_read: float  # bytes per step read from GPU memory
    cpu_read: float  # from host memory
    pcie_read: float  # copied over PCIe
    flags: str  # how to ask for this placement


@dataclass(frozen=True)
class LayersOnCPU:
    label: str = "layers on CPU, computed there"
    unit: str = "layers on GPU"

    def place(self, parts: ModelParts, gpu_layers: int) -> Placement:
        on_gpu = range(parts.layers - gpu_layers, parts.layers)  # the last N layers
        on_cpu = range(parts.layers - gpu_layers)
        output_on_gpu = gpu_layers > 0  # the output slot is the first to go to the GPU
        output_bytes = parts.output or parts.output_read  # a tied head is copied to the output's device
        return Placement(
            gpu_bytes=sum(parts.layer_bytes(i) for i in on_gpu)
            + output_bytes * output_on_gpu
            + parts.gpu_fixed,
            cpu_bytes=sum(parts.layer_bytes(i) for i in on_cpu)
            + parts.embeddings
            + parts.output * (not output_on_gpu),
            gpu_read=sum(parts.layer_read(i) for i in on_gpu) + parts.output_read * output_on_gpu,
            cpu_read=sum(parts.layer_read(i) for i in on_cpu) + parts.output_read * (not output_on_gpu),
            pcie_read=0.0,
            flags=f"llama.cpp -ngl {gpu_layers + 1 if gpu_layers else 0}",
        )


@dataclass(frozen=True)
class ExpertsOnCPU:
    label: str = "routed experts on CPU"
    unit: str = "layers with experts on GPU"

    def place(self, parts: ModelParts, gpu_layers: int) -> Placement:
        if not parts.layer_experts:
            raise ConfigError("this model has no routed experts to offload: offload whole layers instead")
        cpu_layers = parts.layers - gpu_layers  # --n-cpu-moe K: the experts of the first K layers
        active_experts = parts.layer_experts - parts.layer_inactive
        resident = parts.layers * parts.layer_weights - cpu_layers * parts.layer_experts
        reads = sum(parts.layer_read(i) for i in range(parts.layers))
        if cpu_layers == 0:
            flags = "llama.cpp -ngl 99"
        elif cpu_layers == parts.layers:
            flags = "llama.cpp -ngl 99 --cpu-moe"
        else:
            flags = f"llama.cpp -ngl 99 --n-cpu-moe {cpu_layers}"
        return Placement(
            gpu_bytes=resident
            + sum(parts.kv_by_layer)
            + (parts.output or parts.output_read)
            + parts.gpu_fixed,
            cpu_bytes=cpu_layers * parts.layer_experts + parts.embeddings,
            gpu_read=reads + parts.output_read - cpu_layers * active_experts,
            cpu_read=cpu_layers * active_experts,
            pcie_read=0.0,
            flags=flags,
        )


@dataclass(frozen=True)
class StreamedOverPCIe:
    label: str = "weights streamed over PCIe"
    unit: str = "layers on GPU"

    def place(self, parts: ModelParts, gpu_layers: int) -> Placement:
        streamed_layers = parts.layers - gpu_layers  # the last ones: accelerate fills the GPU in order
        all_on_gpu = streamed_layers == 0
        streamed = streamed_layers * parts.layer_weights + parts.output * (not all_on_gpu)
        staging = 0.0 if all_on_gpu else max(parts.layer_weights, parts.output)  # room to copy one into
        kv = sum(parts.kv_by_layer)
        reads = sum(parts.layer_read(i) for i in range(parts.layers)) + parts.output_read
        return Placement(
            gpu_bytes=gpu_layers * parts.layer_weights
            + parts.embeddings
            + parts.output * all_on_gpu
            + staging
            + kv
            + parts.gpu_fixed,
            cpu_bytes=streamed,
            gpu_read=reads,  # copied weights are read again from GPU memory by the kernels
            cpu_read=0.0,
            pcie_read=streamed,
            flags=f'device_map="auto", max_memory for {gpu_layers} of {parts.layers} layers on the GPU',
        )


OffloadMode = LayersOnCPU | ExpertsOnCPU | StreamedOverPCIe
LAYERS_ON_CPU, EXPERTS_ON_CPU, STREAMED = LayersOnCPU(), ExpertsOnCPU(), StreamedOverPCIe()
OFFLOAD_MODES: tuple[OffloadMode, ...] = (LAYERS_ON_CPU, EXPERTS_ON_CPU, STREAMED)


@dataclass(frozen=True)
class OffloadPlan:
    mode: OffloadMode
    gpu_layers: int  # layers (or, for experts, layers whose experts are) on the GPU
    layers: int
    gpu_bytes: float
    cpu_bytes: float
    fits_gpu: bool
    fits_ram: bool
    gpu_seconds: float  # per decode step, reading from GPU memory
    cpu_seconds: float  # reading from host memory
    pcie_seconds: float  # copying over PCIe
    flags: str  # the command-line flags or device_map that give this placement

    @property
    def fits(self) -> bool:
        return self.fits_gpu and self.fits_ram

    @property
    def seconds_per_token(self) -> float:
        return self.gpu_seconds + self.cpu_seconds + self.pcie_seconds

    @property
    def tokens_per_s(self) -> float:
        """Per sequence, like gpus.decode_estimate."""
        return 1 / self.seconds_per_token if self.seconds_per_token else float("inf")


def offload_plan(
    breakdown: MemoryBreakdown,
    config,
    device: GPU,
    host: Host,
    gpu_layers: int,
    mode: OffloadMode = LAYERS_ON_CPU,
) -> OffloadPlan:
    """Bytes on the GPU and in RAM, and decode time per step, with `gpu_layers` layers on the GPU."""
    parts = model_parts(breakdown, config)
    return _plan(parts, device, host, gpu_layers, mode)


def _plan(parts: ModelParts, device: GPU, host: Host, gpu_layers: int, mode: OffloadMode) -> OffloadPlan:
    if isinstance(gpu_layers, bool) or not isinstance(gpu_layers, int) or not 0 <= gpu_layers <= parts.layers:
        raise ConfigError(f"layers on the GPU must be from 0 to {parts.layers} (got {gpu_layers!r})")
    placed = mode.place(parts, gpu_layers)
    return OffloadPlan(
        mode=mode,
        gpu_layers=gpu_layers,
        layers=parts.layers,
        gpu_bytes=placed.gpu_bytes,
        cpu_bytes=placed.cpu_bytes,
        fits_gpu=placed.gpu_bytes <= device.usable_bytes,
        fits_ram=placed.cpu_bytes <= host.ram_bytes,
        gpu_seconds=placed.gpu_read / device.bandwidth,
        cpu_seconds=placed.cpu_read / host.memory_bandwidth,
        pcie_seconds=placed.pcie_read / host.pcie_bandwidth,
        flags=placed.flags,
    )


def speed_cliff(
    breakdown: MemoryBreakdown, config, device: GPU, host: Host, mode: OffloadMode = LAYERS_ON_CPU
) -> list[OffloadPlan]:
    """One plan for every number of layers on the GPU, 0 to all: tokens/s and whether it fits."""
    parts = model_parts(breakdown, config)
    return [_plan(parts, device, host, n, mode) for n in range(parts.layers + 1)]


def best_gpu_layers(
    breakdown: MemoryBreakdown, config, device: GPU, host: Host, mode: OffloadMode = LAYERS_ON_CPU
) -> int:
    """The most layers whose plan fits the GPU (GPU bytes grow with layers); 0 when even none fits."""
    fitting = [
        plan.gpu_layers for plan in speed_cliff(breakdown, config, device, host, mode) if plan.fits_gpu
    ]
    return max(fitting, default=0)
