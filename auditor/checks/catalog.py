"""Every check module, imported so that each registers itself (:func:`load_all`)."""

from __future__ import annotations

from auditor.checks.registry import REGISTRY, CheckSpec


def load_all() -> dict[str, CheckSpec]:
    """Import every check module (registration happens at import) and return the registry."""
    from auditor.checks import boxes, duplicates, embedding, integrity, labels, quality, shift  # noqa: F401

    return REGISTRY
