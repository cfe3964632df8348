"""The mask editor: paint what to repaint over the init image, at the image's own pixel size.

The mask is a greyscale QImage the size of the init image (255 = repaint, 0 = keep), shown in
negative over the image scaled to fit the widget. The left button paints (or erases, with the
eraser on) round strokes `brush_size` image pixels wide, without antialiasing, so every pixel is
0 or 255; the mask blur of the request feathers it later. After each stroke, clear, invert or
load, `mask_edited` carries the mask as a PIL "L" image, or None when nothing is painted (plain
img2img).
"""

from __future__ import annotations

import os

from PIL import Image
from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QImage,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QPen,
)
from PySide6.QtWidgets import QSizePolicy, QWidget

from sdxs_rt.image_inputs import check_mask_size, load_mask

PAINT = 255
KEEP = 0
# The painted part is shown in negative (white drawn in difference mode): visible on any image.
VEIL = QColor(255, 255, 255)
VEIL_OPACITY = 0.8
DEFAULT_BRUSH = 24  # image pixels
PLACEHOLDER = "Open an input image to paint a mask on it"


def qimage_to_mask(mask: QImage) -> Image.Image | None:
    """A Grayscale8 QImage as a PIL "L" image; None when no pixel is painted."""
    grey = mask.convertToFormat(QImage.Format.Format_Grayscale8)
    width, height, stride = grey.width(), grey.height(), grey.bytesPerLine()
    data = bytes(grey.constBits())[: stride * height]
    image = Image.frombuffer("L", (width, height), data, "raw", "L", stride, 1).copy()
    return image if image.getbbox() is not None else None


def mask_to_qimage(mask: Image.Image) -> QImage:
    """A PIL image (any mode, read as greyscale) as a Grayscale8 QImage that owns its pixels."""
    grey = mask.convert("L")
    width, height = grey.size
    return QImage(grey.tobytes(), width, height, width, QImage.Format.Format_Grayscale8).copy()


def empty_mask(size: QSize) -> QImage:
    mask = QImage(size, QImage.Format.Format_Grayscale8)
    mask.fill(KEEP)
    return mask


class MaskEditor(QWidget):
    """See the module docstring. `set_image` gives it the init image (and an empty mask)."""

    mask_edited = Signal(object)  # PIL "L" image, or None: nothing painted

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.image = QImage()  # the init image (null: none)
        self.mask = QImage()  # Grayscale8, the image's size
        self.brush_size = DEFAULT_BRUSH
        self.eraser = False
        self._last_point: QPointF | None = None
        self._emitted: Image.Image | None = None
        self._veil: QImage | None = None  # the red overlay, rebuilt after the mask changes
        self.setMinimumSize(160, 160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMouseTracking(False)
        self.setCursor(Qt.CursorShape.CrossCursor)
        self.setToolTip("Paint where the image should change (left button); see Brush and Eraser")

    def sizeHint(self) -> QSize:
        return QSize(320, 260)

    # ---------------------------------------------------------------- the image and the mask

    def set_image(self, image: QImage | None) -> None:
        """A new init image (None or null: none); the mask starts empty at its size."""
        self.image = QImage() if image is None or image.isNull() else image
        self.mask = QImage() if self.image.isNull() else empty_mask(self.image.size())
        self._emitted = None
        self._changed()

    def show_mask(self, mask: Image.Image | None) -> None:
        """Show a mask from the state (the one this editor emitted is already shown)."""
        if self.image.isNull() or (mask is not None and mask is self._emitted):
            return
        if mask is None:
            self.mask = empty_mask(self.image.size())
        elif mask.size == (self.image.width(), self.image.height()):
            self.mask = mask_to_qimage(mask)
        else:
            return  # a mask for another image; the state drops it when the image changes
        self._emitted = mask
        self._changed()

    def mask_pil(self) -> Image.Image | None:
        return None if self.mask.isNull() else qimage_to_mask(self.mask)

    def clear(self) -> None:
        if not self.mask.isNull():
            self.mask.fill(KEEP)
            self._edited()

    def invert(self) -> None:
        if not self.mask.isNull():
            self.mask.invertPixels()
            self._edited()

    def load_mask(self, path: str | os.PathLike[str]) -> None:
        """A mask file of the init image's size (raises UsageError or ModelNotFoundError)."""
        mask = load_mask(path)
        check_mask_size(mask, (self.image.width(), self.image.height()))
        self.mask = mask_to_qimage(mask)
        self._edited()

    def _edited(self) -> None:
        self._changed()
        self._emitted = self.mask_pil()
        self.mask_edited.emit(self._emitted)

    def _changed(self) -> None:
        self._veil = None
        self.update()

    # ---------------------------------------------------------------- geometry

    def image_rect(self) -> QRectF:
        """Where the image is drawn: scaled to fit, centred."""
        if self.image.isNull():
            return QRectF()
        size = self.image.size().scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio)
        left = (self.width() - size.width()) / 2
        top = (self.height() - size.height()) / 2
        return QRectF(left, top, size.width(), size.height())

    def to_image(self, point: QPointF) -> QPointF:
        """A widget position -> image pixel coordinates."""
        rect = self.image_rect()
        scale = self.image.width() / rect.width()
        return QPointF((point.x() - rect.left()) * scale, (point.y() - rect.top()) * scale)

    def to_widget(self, point: QPointF) -> QPointF:
        """Image pixel coordinates -> the widget position that paints there."""
        rect = self.image_rect()
        scale = rect.width() / self.image.width()
        return QPointF(rect.left() + point.x() * scale, rect.top() + point.y() * scale)

    # ---------------------------------------------------------------- painting strokes

    def stroke_to(self, point: QPointF) -> None:
        """Paint from the stroke's last point (a dot when it starts) to `point`, in image px."""
        painter = QPainter(self.mask)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        painter.setCompositionMode(QPainter.CompositionMode.CompositionMode_Source)
        value = KEEP if self.eraser else PAINT
        pen = QPen(QColor(value, value, value), self.brush_size)
        pen.setCapStyle(Qt.PenCapStyle.RoundCap)
        pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
        painter.setPen(pen)
        if self._last_point is None or self._last_point == point:  # Qt draws no 0-length line
            painter.setBrush(pen.color())
            painter.setPen(Qt.PenStyle.NoPen)
            radius = self.brush_size / 2
            painter.drawEllipse(point, radius, radius)
        else:
            painter.drawLine(self._last_point, point)
        painter.end()
        self._last_point = point
        self._changed()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton or self.mask.isNull():
            super().mousePressEvent(event)
            return
        self._last_point = None
        self.stroke_to(self.to_image(event.position()))

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._last_point is None or not event.buttons() & Qt.MouseButton.LeftButton:
            super().mouseMoveEvent(event)
            return
        self.stroke_to(self.to_image(event.position()))

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton or self._last_point is None:
            super().mouseReleaseEvent(event)
            return
        self.stroke_to(self.to_image(event.position()))
        self._last_point = None
        self._edited()

    # ---------------------------------------------------------------- drawing the widget

    def veil(self) -> QImage:
        """White where the mask is painted, transparent elsewhere."""
        if self._veil is None:
            veil = QImage(self.mask.size(), QImage.Format.Format_ARGB32)
            veil.fill(VEIL)
            veil.setAlphaChannel(self.mask)
            self._veil = veil
        return self._veil

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), self.palette().window())
        if self.image.isNull():
            painter.setPen(self.palette().placeholderText().color())
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, PLACEHOLDER)
            return
        rect = self.image_rect()
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        painter.drawImage(rect, self.image)
        painter.setOpacity(VEIL_OPACITY)
        painter.setCompositionMode(QPainter.CompositionMode.CompositionMode_Difference)
        painter.drawImage(rect, self.veil())
