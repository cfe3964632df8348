"""sdxs-rt: a fast, embeddable inference runtime for the SDXS text-to-image model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from sdxs_rt.pipeline import GenerationResult, Pipeline

__all__ = ["GenerationResult", "Pipeline", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy so that `import sdxs_rt` (and `sdxs-rt --help`) stays light.
    if name in ("Pipeline", "GenerationResult"):
        from sdxs_rt import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'sdxs_rt' has no attribute {name!r}")
