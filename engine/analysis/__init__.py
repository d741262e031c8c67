"""Looking inside a model: statistics from forward hooks, weight statistics, outliers, the block view of
one tensor under a scheme, prior-grid detection, the tensors a user can pick, and where the outliers come
from: massive activations, the attention sink and the super weights that make them.

Read in order: tensors -> blocks -> priorgrid -> site_stats -> stats -> weight_stats -> outliers -> massive
-> ablation -> super_weights.
"""
