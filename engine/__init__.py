"""Quantization Explorer engine: pure PyTorch, no Streamlit.

Read in order: schemes -> formats -> primitives -> observers/metrics -> modules -> methods.
Model sources and loading live in `models`; text in `data`; memory sizing in `memory`.
"""
