"""Per-page forms, runners and charts too big for the page file: one module (or two) per page."""
