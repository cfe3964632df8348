"""Make `sdxs_rt_export` / `sdxs_rt_desktop` import from the working tree's `export/` and
`desktop/` folders, the names they install under."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE_PACKAGES = {"sdxs_rt_export": ROOT / "export", "sdxs_rt_desktop": ROOT / "desktop"}


def alias_source_packages() -> None:
    for name, folder in SOURCE_PACKAGES.items():
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(
            name, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
