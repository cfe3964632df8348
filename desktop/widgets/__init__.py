"""Widgets bound to the state objects (`sdxs_rt_desktop.state`); no generation logic here."""

from sdxs_rt_desktop.widgets.engine_dialog import EngineBuildDialog
from sdxs_rt_desktop.widgets.gallery import Gallery
from sdxs_rt_desktop.widgets.generation_panel import GenerationPanel
from sdxs_rt_desktop.widgets.model_panel import ModelPanel
from sdxs_rt_desktop.widgets.preview_view import PreviewView
from sdxs_rt_desktop.widgets.progress_panel import ProgressPanel
from sdxs_rt_desktop.widgets.queue_panel import QueuePanel
from sdxs_rt_desktop.widgets.run_buttons import RunButtons
from sdxs_rt_desktop.widgets.walk_dialog import WalkDialog

__all__ = [
    "EngineBuildDialog",
    "Gallery",
    "GenerationPanel",
    "ModelPanel",
    "PreviewView",
    "ProgressPanel",
    "QueuePanel",
    "RunButtons",
    "WalkDialog",
]
