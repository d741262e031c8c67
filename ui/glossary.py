"""The glossary: the dashboard's terms in one or two sentences each, searchable from every page's sidebar."""

from __future__ import annotations

import streamlit as st

TERMS: dict[str, str] = {
    "Absmax": (
        "The largest absolute value in a block. Symmetric quantization sets the scale so that absmax lands "
        "on the largest positive code (for int4: scale = absmax / 7)."
    ),
    "Activation": (
        "The values flowing between layers for a given input (a layer's inputs and outputs), as opposed to "
        "the weights, which are fixed. They change with every token, so they are quantized on the fly."
    ),
    "Asymmetric range": (
        "The grid runs from the block's minimum to its maximum, shifted by an offset (an integer zero point "
        "or a float minimum), so no codes are wasted when the values are lopsided. Costs one more stored "
        "number per block than symmetric."
    ),
    "asym_min / float minimum (Q4_1)": (
        "An asymmetric range stored as a scale and a float minimum: x ≈ code × scale + min, so the block's "
        "minimum and maximum are both exact. llama.cpp's Q4_1 is 4-bit codes in blocks of 32 with an fp16 "
        "scale and minimum: 5 bits per weight."
    ),
    "AWQ": (
        "Activation-aware Weight Quantization (Lin et al., 2023): before rounding, it multiplies each weight "
        "input channel by a factor that grows with that channel's typical activation size, and divides the "
        "activations by the same factor, so the salient weights (about 1% matter most) lose less precision. "
        "Weight-only; needs a little calibration text."
    ),
    "Bits per weight": (
        "Storage per weight with the overhead included: the code bits plus each scale's (and zero point's) "
        "bits divided by the number of weights sharing it. int4 with an fp16 scale per 128 weights is "
        "4 + 16/128 = 4.125."
    ),
    "bnb FP4": (
        "bitsandbytes' 4-bit float: 1 sign, 2 exponent and 1 mantissa bit (e2m1), 16 levels spaced like a "
        "float, scaled by each block's absmax. QLoRA found NF4 slightly more accurate on normally "
        "distributed weights."
    ),
    "Calibration": (
        "Running a little real text through the model to record activation statistics (ranges, outlier "
        "channels, input correlations) that methods such as GPTQ, AWQ and SmoothQuant need. RTN needs none."
    ),
    "Clip ratio": (
        "A factor below 1 that shrinks the observed range before the scale is computed: the few values "
        "beyond it are clipped, and every other value gets finer steps."
    ),
    "Decode and prefill": (
        "Prefill processes the whole prompt at once (matrix-matrix products, compute-bound); decode then "
        "generates one token per step (matrix-vector products, memory-bound)."
    ),
    "Double quantization": (
        "QLoRA's trick of quantizing the per-block scales themselves to 8 bits, in blocks of 256 with one "
        "fp32 scale each: NF4 at block size 64 drops from 4.5 to about 4.127 bits per weight."
    ),
    "FP8 e4m3 / e5m2": (
        "8-bit floats. e4m3 has 4 exponent and 3 mantissa bits (range ±448): more precision, used for "
        "weights and activations. e5m2 has 5 and 2 (range ±57,344): more range, often used for gradients."
    ),
    "GEMV": (
        "General matrix-vector multiply: one token's activations times a weight matrix. Each weight is read "
        "once for one multiply-add, so decoding at batch 1 is limited by memory bandwidth, not compute."
    ),
    "GPTQ": (
        "A post-training method (Frantar et al., 2022) that quantizes a layer's weight columns one at a "
        "time and adjusts the columns not yet quantized to cancel the error, using the inverse Hessian "
        "(from X·Xᵀ) of the layer's calibration inputs."
    ),
    "Granularity": (
        "Which values share one scale: the whole tensor, each row (an output channel of a weight, or a "
        "token of an activation), or each group of consecutive values within a row."
    ),
    "Group size": (
        "How many consecutive values of a row share one scale (and zero point). Smaller groups follow local "
        "ranges better but store more scales (int4: 4.5 bits per weight at 32, 4.125 at 128, with fp16 "
        "scales). It must divide the row length."
    ),
    "Integer zero point": (
        "An integer code z stored per block so that x ≈ (code − z) × scale: the real value 0 maps exactly to "
        "code z. Asymmetric int schemes in torchao and GPTQ use it."
    ),
    "KL divergence": (
        "How far the quantized model's next-token distribution Q is from the reference's P: Σ P·log(P/Q), "
        "in nats, averaged over positions. 0 means identical predictions; it catches changes that "
        "perplexity averages away."
    ),
    "KV cache": (
        "The keys and values of every earlier token, kept per layer so each new token attends to them "
        "without recomputing; it grows with context length and batch."
    ),
    "KV4 / KIVI": (
        "KV4 stores the KV cache in 4 bits. KIVI (Liu et al., 2024) quantizes keys per channel and values "
        "per token, because key outliers sit in fixed channels, and keeps the most recent tokens in full "
        "precision; its paper goes down to 2 bits."
    ),
    "LLM.int8()": (
        "Dettmers et al., 2022: int8 matrix multiplication with one scale per token and one per output "
        "channel, except for the input features whose activations reach magnitude 6 or more (outliers), "
        "which are multiplied in 16-bit. It keeps large models' accuracy at about half the fp16 weight memory."
    ),
    "NF4": (
        "NormalFloat4 (QLoRA, Dettmers et al., 2023): a 16-value codebook with levels at quantiles of a "
        "normal distribution (and an exact zero), scaled by each block's absmax, blocks of 64 by default. "
        "Suits normally distributed weights."
    ),
    "Nats": (
        "The unit of information with natural logarithms: 1 nat = 1/ln 2 ≈ 1.44 bits. KL divergence and "
        "per-token loss are in nats here."
    ),
    "Outlier / massive activation": (
        "An outlier is an activation far larger than the rest, usually in a few fixed hidden channels; it "
        "stretches any scale it shares. Massive activations (Sun et al., 2024) are a few values up to tens "
        "of thousands of times the median, at specific tokens and channels, that act like fixed biases."
    ),
    "Perplexity": (
        "exp of the average negative log-likelihood per token on held-out text: roughly how many tokens the "
        "model hesitates between. Lower is better; quantization usually raises it a little."
    ),
    "Roofline": (
        "A speed model: a kernel runs at most at min(peak compute, memory bandwidth × arithmetic intensity), "
        "where intensity is operations per byte moved. Below the ridge point it is memory-bound (decode), "
        "above it compute-bound (large prefill)."
    ),
    "RTN": (
        "Round-to-nearest: compute each block's scale from its own values and round every value to the "
        "nearest level, with no calibration data and no error compensation. The baseline for every method."
    ),
    "Scale": (
        "The step between neighbouring levels of a block's grid: x ≈ code × scale. It is stored next to the "
        "codes, in fp16, bf16 or fp32 (the scale dtype)."
    ),
    "SmoothQuant": (
        "Xiao et al., 2022: divides each activation channel by s = max|X|^α / max|W|^(1−α) and multiplies the "
        "matching weight input channel by s (α = 0.5 by default). The product is unchanged, but the "
        "activation outliers shrink, so weights and activations both fit int8 (W8A8)."
    ),
    "SQNR": (
        "Signal-to-quantization-noise ratio: 10·log10(Σx² / Σ(x − x̂)²), in dB. Higher is better; each extra "
        "bit of a uniform grid adds about 6 dB."
    ),
    "Symmetric range": (
        "The grid spans ±absmax around zero with no offset: zero is exact and only a scale is stored, but "
        "part of the grid goes unused when the values are lopsided."
    ),
    "Teacher-forced": (
        "Scoring where the model reads the reference text, not its own outputs, and is scored at every "
        "position, so the reference and the quantized model see exactly the same context."
    ),
    "Tokens per second": (
        "Generation speed: new tokens produced per second. At batch 1 it is set mostly by how many bytes of "
        "weights (and KV cache) each token has to read."
    ),
    "Top-1 agreement / disagreement": (
        "Agreement is the share of positions where the quantized model's most likely next token equals the "
        "reference's; disagreement is 1 minus that."
    ),
    "W4A16": (
        "Weights in 4 bits, activations in 16-bit floats (weight-only): the weights are expanded to 16 bits "
        "inside the matmul. It saves memory and speeds up memory-bound decode."
    ),
    "W8A8": (
        "Weights and activations both in 8 bits (int8 here; FP8 on newer GPUs), so the matmul itself runs in "
        "8 bits; the activations are quantized on the fly, usually with one scale per token."
    ),
    "W4A4": (
        "Weights and activations both in 4 bits. Activation outliers make it the hardest case: plain RTN "
        "loses much accuracy without methods that smooth or rotate the activations."
    ),
}


def matching(query: str) -> dict[str, str]:
    """The terms, alphabetically, whose name or definition contains `query` (any case); all for ""."""
    words = query.strip().lower()
    found = {term: text for term, text in TERMS.items() if words in term.lower() or words in text.lower()}
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


def render(where=st) -> None:
    """The glossary as a collapsed expander with a search box (the sidebar's last section)."""
    with where.expander("Glossary", icon=":material/menu_book:"):
        query = st.text_input("Search the glossary", key="qe_glossary_search", placeholder="e.g. group size")
        found = matching(query)
        if not found:
            st.caption(f"No term mentions “{query.strip()}”.")
            return
        st.markdown("\n\n".join(f"**{term}**: {text}" for term, text in found.items()))
