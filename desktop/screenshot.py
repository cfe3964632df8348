"""Screenshot of the real main window: `python -m sdxs_rt_desktop.screenshot OUT.png [--generate]`.

Runs on whatever Qt platform is current; under `xvfb-run` that is the real xcb platform, and
without a display Qt's offscreen one draws the same window:

    xvfb-run -a -s "-screen 0 1400x900x24" python -m sdxs_rt_desktop.screenshot docs/desktop.png \
        --generate
    QT_QPA_PLATFORM=offscreen python -m sdxs_rt_desktop.screenshot docs/desktop.png --generate

Settings come from a throwaway file (the user's are neither read nor changed) and images go to a
throwaway history folder unless SDXS_RT_HISTORY names one. `--generate` first runs one small
generation with the built-in model at its own size, so that the preview and the gallery show an
image of something it was trained to draw.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from PySide6.QtCore import QBuffer, QEventLoop, QIODevice, QSettings, QTimer
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QApplication
from sdxs_rt_desktop.app import HISTORY_ENV, AppStates, MainWindow, application, build_window

DEMO_PROMPT = "a red circle on a blue background"  # the demo model knows shapes and colours
DEMO_SEED = 5  # a round circle, clear of the edges
WINDOW_SIZE = (1400, 900)
MAX_KIB = 480  # docs/desktop.png stays under 500 KB


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sdxs_rt_desktop.screenshot",
        description="Save a screenshot of the sdxs-rt desktop window.",
    )
    parser.add_argument("output", type=Path, help="PNG file to write")
    parser.add_argument(
        "--generate", action="store_true", help="run one small generation with the built-in model"
    )
    parser.add_argument("--steps", type=int, default=8, help="steps for --generate (default 8)")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for --generate (default 300)"
    )
    return parser.parse_args(argv)


def set_demo_state(states: AppStates, steps: int) -> None:
    states.generation.update(
        prompt=DEMO_PROMPT,
        negative_prompt="",
        seed=DEMO_SEED,
        random_seed=False,
        steps=steps,
        scheduler="",  # the model's own; the size is the model's own too (model_size.py)
        preview_every=2,
    )
    states.model.update(model="", backend="torch", precision="fp32", device="cpu")


def wait_for(signal: Any, timeout_s: float) -> bool:
    """Run the event loop until `signal` fires (True) or the time is up (False)."""
    loop = QEventLoop()
    fired: list[bool] = []
    signal.connect(lambda *_: (fired.append(True), loop.quit()))
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec()
    return bool(fired)


def settle(milliseconds: int = 400) -> None:
    """Let layouts, repaints and queued signals finish."""
    loop = QEventLoop()
    QTimer.singleShot(milliseconds, loop.quit)
    loop.exec()


def generate_one(window: MainWindow, timeout_s: float) -> bool:
    finished = window.controller.finished
    window.generate()
    done = wait_for(finished, timeout_s)
    if not done:
        print(f"screenshot: no image after {timeout_s:.0f} s; saving the window as it is")
    return done


def png_bytes(image: QImage) -> bytes:
    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    return bytes(buffer.data().data())


def palette_png(data: bytes) -> bytes:
    """The same picture in 256 colours: a fraction of the size for a noisy generated image."""
    with Image.open(io.BytesIO(data)) as image:
        quantized = image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    quantized.save(out, "PNG", optimize=True)
    return out.getvalue()


def take_screenshot(window: MainWindow, output: Path, max_kib: int = MAX_KIB) -> None:
    """Save `window.grab()`; in 256 colours when full colour would be over `max_kib`."""
    data = png_bytes(window.grab().toImage())
    if len(data) > max_kib * 1024:
        data = palette_png(data)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(data)
    print(f"screenshot: wrote {output} ({len(data) // 1024} KiB)")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    app: QApplication = application([sys.argv[0]])
    with tempfile.TemporaryDirectory(prefix="sdxs-rt-screenshot-") as scratch:
        settings = QSettings(str(Path(scratch) / "settings.ini"), QSettings.Format.IniFormat)
        history = Path(os.environ.get(HISTORY_ENV) or Path(scratch) / "history")
        window = build_window(settings, history)
        set_demo_state(window.states, args.steps)
        window.resize(*WINDOW_SIZE)
        window.show()
        settle()
        if args.generate:
            generate_one(window, args.timeout)
            settle()
        take_screenshot(window, args.output)
        window.close()
        app.processEvents()
    return 0


if __name__ == "__main__":
    sys.exit(main())
