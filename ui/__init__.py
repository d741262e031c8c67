"""Streamlit glue: cached engine calls, shared widgets, charts and session-state keys.

Besides `app.py` and `pages/`, this is the only package that imports streamlit.
- cache/: every cached engine call (the model registry, the grid page's tensors, statistics, lessons,
  quantized variants); cached objects are shared by every session and never mutated.
- pages/: one module (or two) per page for forms, runners and charts too big for the page file.
- sidebar.py, page.py (the frame every page shares), widgets.py (the scheme picker), charts.py,
  state.py (session-state keys), errors.py (clear messages for bad input), progress.py.
"""
