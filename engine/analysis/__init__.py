"""Looking inside a model: statistics from forward hooks, weight statistics, outliers, the block view of
one tensor under a scheme, prior-grid detection, and the tensors a user can pick.

Read in order: tensors -> blocks -> priorgrid -> site_stats -> stats -> weight_stats -> outliers.
"""
