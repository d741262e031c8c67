"""Streamlit glue: cached engine calls, shared widgets, charts and session-state keys.

Besides `app.py` and `pages/`, this is the only package that imports streamlit. Caching lives in
`cache.py` (the model registry and the grid page's calls) and its per-page siblings `lesson_cache.py` and
`outlier_cache.py`, which follow the same rules: cached objects are shared by every session and never
mutated, and work that reports progress runs outside `st.cache_*` functions.
"""
