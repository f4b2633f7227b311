"""image-auditor: measure what is wrong with an image dataset before fine-tuning on it.

``auditor.scan(...)`` and ``auditor.gate(...)`` are the entry points for pipelines and
training scripts (imported lazily: ``import auditor`` stays cheap).
"""

from auditor.core.version import __version__

__all__ = ["__version__", "scan", "gate", "GateFailed", "GateResult"]

_LAZY = {
    "scan": ("auditor.pipeline.scan", "scan"),
    "gate": ("auditor.pipeline.gate", "gate"),
    "GateFailed": ("auditor.policy.gate", "GateFailed"),
    "GateResult": ("auditor.policy.gate", "GateResult"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'auditor' has no attribute {name!r}")
