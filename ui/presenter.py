"""Presenter mode and the guided tour (issue 21): a stub until its helper fills it in."""

from __future__ import annotations


def apply(title: str) -> None:
    """Called by `ui.page.start` after the title: presenter styling and the tour banner for this page."""
    return None
