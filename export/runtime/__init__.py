"""The torch-free runtime of an exported student: sessions, gallery index, `itr-distill search`, the search
page (`itr-distill serve`), its load test, device check.

Nothing under `export/runtime/` imports torch, so the runtime installs and runs without it. Its modules
may import only numpy, onnxruntime, tokenizers, Pillow (faiss when installed), each other, and the
torch-free `core.io`, `core.data.images`, `core.machine` and `core.timing`; `serve.py` alone may also
import its web framework (Starlette, uvicorn, python-multipart: the `serve` extra);
tests/export/test_runtime_boundary.py enforces this over everything they import, transitively.

The session names load onnxruntime, so they resolve on first use (PEP 562) rather than with the
package: the CLI's parser imports `export.runtime.search` and must not pay for onnxruntime.
"""
from __future__ import annotations

from typing import Any

from export.runtime.index import GalleryIndex, SearchHit, faiss_available
from export.runtime.providers import PROVIDER_ALIASES

MANIFEST = "manifest.json"  # an export directory's manifest (DESIGN.md: the exported model directory)
SORT_BLOCK_BATCHES = 64  # OnnxStudent.encode_text tokenises and sorts captions by length a block of this many batches at a time
_SESSION_NAMES = ("OnnxStudent", "ProviderError", "make_session", "resolve_providers")

__all__ = ["GalleryIndex", "MANIFEST", "SearchHit", "faiss_available", "PROVIDER_ALIASES", *_SESSION_NAMES]


def __getattr__(name: str) -> Any:
    if name in _SESSION_NAMES:
        from export.runtime import session

        return getattr(session, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
