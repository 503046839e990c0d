"""tunery: from a labelled text file to a fine-tuned, evaluated, reusable transformer model.

    import tunery
    clf = tunery.TextClassifier(backbone="minilm-l6").fit(df, text="review", label="label")
    tunery.load("runs/my-run").predict(["great value"])
    best = tunery.auto(df, text="review", label="label", budget="10m")   # search within a budget

Heavy imports (torch, transformers) happen on first use, so `import tunery` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "load": "tunery.predict",
    "Predictor": "tunery.predict",
    "TextClassifier": "tunery.api",
    "auto": "tunery.api",
    "load_config": "tunery.config",
    "RunConfig": "tunery.config",
    "train": "tunery.pipeline",
    "resume": "tunery.pipeline",
    "evaluate_run": "tunery.pipeline",
    "TuneryError": "tunery.errors",
    "Client": "tunery.client",
    "ApiError": "tunery.client",
}

if TYPE_CHECKING:  # pragma: no cover
    from tunery.api import TextClassifier, auto
    from tunery.client import ApiError, Client
    from tunery.config import RunConfig, load_config
    from tunery.errors import TuneryError
    from tunery.pipeline import evaluate_run, resume, train
    from tunery.predict import Predictor, load


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tunery' has no attribute {name!r}")


__all__ = sorted(_EXPORTS) + ["__version__"]
