"""Graph folders on disk: saving (external data past 2 GB), content hashes, per-graph stamps,
and putting a finished folder in place so that no reader ever sees half a graph.

Each graph lives in `<out>/<name>/`: `model.onnx`, `model.onnx.data` when the weights need
external data, and `export.json`, the stamp a rerun compares to skip finished graphs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnx

from sdxs_rt.errors import UsageError
from sdxs_rt.graphs import GraphEntry
from sdxs_rt.loading import file_sha256

GRAPH_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
STAMP_FILE = "export.json"
STAMP_FORMAT = 1
GRAPH_FOLDER_FILES = (GRAPH_FILE, DATA_FILE, STAMP_FILE)
# Protobuf cannot serialise a message of 2 GiB or more; stay clear of it with some margin for
# the graph itself. Module-level so that a test can force external data on a tiny graph.
EXTERNAL_DATA_THRESHOLD = 2_000_000_000


def weights_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) or t.ByteSize() for t in model.graph.initializer)


def save_graph(model: onnx.ModelProto, path: Path) -> bool:
    """Write `model` to `path`; past the threshold its weights go to `model.onnx.data`.

    Returns whether external data was used.
    """
    external = weights_bytes(model) > EXTERNAL_DATA_THRESHOLD
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=DATA_FILE,
            size_threshold=1024,  # small tensors stay inline, as onnx does by default
        )
    else:
        onnx.save_model(model, str(path))
    return external


def graph_digest(folder: Path) -> str:
    """sha256 of `model.onnx`; with external data, the sha256 of the `sha256sum` listing of
    `model.onnx` and `model.onnx.data` (so `sha256sum model.onnx* | sha256sum` checks it)."""
    graph_hash = file_sha256(folder / GRAPH_FILE)
    data = folder / DATA_FILE
    if not data.is_file():
        return graph_hash
    listing = f"{graph_hash}  {GRAPH_FILE}\n{file_sha256(data)}  {DATA_FILE}\n"
    return hashlib.sha256(listing.encode()).hexdigest()


# --- stamps -------------------------------------------------------------------------------


def stamp_key(values: dict[str, Any]) -> dict[str, Any]:
    """The key as it reads back from JSON (tuples become lists), so comparisons are exact."""
    return json.loads(json.dumps(values, sort_keys=True))


def fresh_entry(folder: Path, key: dict[str, Any]) -> GraphEntry | None:
    """The recorded entry when the folder holds the intact graph exported for `key`."""
    try:
        stamp = json.loads((folder / STAMP_FILE).read_text(encoding="utf-8"))
        if stamp.get("format") != STAMP_FORMAT or stamp.get("key") != key:
            return None
        entry = GraphEntry(**stamp["entry"])
        return entry if graph_digest(folder) == entry.sha256 else None
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # missing, unreadable or foreign: export again


def write_stamp(folder: Path, key: dict[str, Any], entry: GraphEntry) -> None:
    """Written after the graph is in place: a crash in between only costs a re-export."""
    stamp = {"format": STAMP_FORMAT, "key": key, "entry": entry.__dict__}
    _write_atomically(folder / STAMP_FILE, json.dumps(stamp, indent=2) + "\n")


def _write_atomically(path: Path, text: str) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temp, _default_mode(0o666))
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


# --- folders ------------------------------------------------------------------------------


def partial_dir(out_dir: Path, name: str) -> Path:
    """A fresh work folder beside the target (same file system, so the final rename is atomic).

    Leftovers of an export that was killed are removed first.
    """
    for stale in [*out_dir.glob(f".{name}.partial-*"), *out_dir.glob(f".{name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=out_dir))
    os.chmod(work, _default_mode(0o777))  # mkdtemp makes it private; the result is shared
    return work


def _default_mode(full: int) -> int:
    """The mode a plain mkdir/open would give: `full` less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return full & ~umask


def check_replaceable(folder: Path, allowed: tuple[str, ...]) -> None:
    """Refuse to replace a folder holding anything but what an export writes there.

    `--out` pointing at the model folder itself would otherwise swap its `unet/` for a graph.
    """
    if not folder.is_dir():
        return
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in allowed)
    if foreign:
        raise UsageError(
            f"{folder} holds files that an export did not write ({', '.join(foreign[:3])}); "
            "choose an empty or earlier export folder for --out"
        )


def install_dir(finished: Path, target: Path) -> None:
    """Swap `finished` in as `target`: renames only, so `target` is never half-written."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(finished, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
