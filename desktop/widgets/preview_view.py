"""The live preview: the latest preview or finished image, scaled to fit, aspect kept."""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QImage, QPixmap, QResizeEvent
from PySide6.QtWidgets import QLabel, QSizePolicy, QWidget

PLACEHOLDER = "The preview appears here while an image is generated."


class PreviewView(QLabel):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(PLACEHOLDER, parent)
        self.image = QImage()
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setMinimumSize(256, 256)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setStyleSheet("background: palette(base); color: palette(mid);")

    def show_image(self, image: QImage) -> None:
        """Show a preview (small, blocky: scaled smoothly) or a finished image."""
        if image.isNull():
            return
        self.image = image
        self._rescale()

    def clear_image(self) -> None:
        self.image = QImage()
        self.clear()
        self.setText(PLACEHOLDER)

    def sizeHint(self) -> QSize:
        return QSize(576, 576)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._rescale()

    def _rescale(self) -> None:
        if self.image.isNull():
            return
        scaled = QPixmap.fromImage(self.image).scaled(
            self.contentsRect().size(),
            Qt.AspectRatioMode.KeepAspectRatio,
            Qt.TransformationMode.SmoothTransformation,
        )
        self.setPixmap(scaled)
