"""Streamlit glue: cached engine calls, shared widgets, charts and session-state keys.

Besides `app.py` and `pages/`, this is the only package that imports streamlit.
"""
