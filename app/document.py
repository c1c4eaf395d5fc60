"""The open photo and its editable state (Qt-free): pixels, display pyramids, mask, history."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from app.maskedit import Edit, History, Rect, diff_edit, union_rects
from app.pyramid import build_pyramid, mask_to_u8, update_pyramid

SIDECAR_SUFFIX = ".retouch-mask.png"


def sidecar_path(photo_path: Path) -> Path:
    """Where the edited mask of ``photo_path`` is kept: ``IMG_0001.jpg`` -> ``IMG_0001.jpg.retouch-mask.png``."""
    return photo_path.with_name(photo_path.name + SIDECAR_SUFFIX)


class Document:
    """One open photo. ``mask`` is the full-resolution editable mask (float32 in [0, 1]).

    ``working`` (an ``engine.colour.WorkingSpace``) is the photo as the network sees it (sRGB) and
    the way back into the photo's own profile; ``to_display`` turns photo pixels into screen
    pixels (None: the photo is sRGB). The display pyramids hold converted pixels.
    """

    def __init__(self, path: Path, photo: Any, before_levels: list[np.ndarray], working: Any = None,
                 to_display: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.path = Path(path)
        self.photo = photo
        self.before_levels = before_levels
        self.working = working
        self.to_display = to_display
        self.write_confirmed = False  # the user agreed once to Save into the original file
        self.written_version: int | None = None  # mask_version last written into the photo itself
        self.after_levels: list[np.ndarray] | None = None
        self.analysis: Any = None
        self.predicted: np.ndarray | None = None
        self.mask: np.ndarray | None = None
        self.mask_levels: list[np.ndarray] | None = None
        self.correction: Any = None
        self.history = History()
        self.mask_version = 0  # bumps on every mask change
        self.after_version = 0  # bumps when a new correction arrives
        self.rendered_version = -1  # mask_version the current correction was rendered from
        self.saved_version = 0  # mask_version last written to (or read from) the sidecar
        self._edits: list[tuple[int, Rect]] = []  # (mask_version, rect) of each mask change not yet rendered
        self.last_update: Rect | None = None  # the rectangle the last correction update (or preview) replaced

    # --- basic facts -------------------------------------------------------------------------
    @property
    def image(self) -> np.ndarray:
        return self.photo.pixels

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def has_mask(self) -> bool:
        return self.mask is not None

    @property
    def network_image(self) -> np.ndarray:
        """What the model analyses: the photo in sRGB (the photo itself when it is sRGB)."""
        return self.working.image if self.working is not None else self.photo.pixels

    def to_photo(self, correction: Any) -> Any:
        """A correction rendered on :attr:`network_image`, as a correction of the photo's own pixels."""
        return self.working.to_photo(correction) if self.working is not None else correction

    @property
    def dirty(self) -> bool:
        """True when the mask has edits that are neither in the sidecar nor written into the photo
        (Save): the last saved/restored sidecar, or the prediction, or the last in-place save."""
        return self.mask is not None and self.mask_version not in (self.saved_version, self.written_version)

    @property
    def edited(self) -> bool:
        """True when the mask differs from the model's prediction."""
        return self.mask is not None and self.predicted is not None and not np.array_equal(self.mask, self.predicted)

    # --- mask --------------------------------------------------------------------------------
    def set_analysis(self, analysis: Any, restored_mask: np.ndarray | None = None) -> None:
        """Install the prediction; ``restored_mask`` (from the sidecar) becomes the edited mask if given."""
        self.analysis = analysis
        self.predicted = np.clip(np.asarray(analysis.mask, np.float32), 0.0, 1.0)
        self.mask = (restored_mask if restored_mask is not None else self.predicted).astype(np.float32, copy=True)
        self.mask_levels = build_pyramid(mask_to_u8(self.mask))
        self.history.clear()
        self.mask_version += 1
        self.saved_version = self.mask_version
        self.correction = None  # rendered from another analysis: the next render is a full one
        self._edits.clear()

    def mask_changed(self, rect: Rect | None) -> None:
        """Refresh the display pyramid inside ``rect`` after ``mask`` was modified there."""
        if rect is None or self.mask is None or self.mask_levels is None:
            return
        x0, y0, x1, y1 = rect
        self.mask_levels[0][y0:y1, x0:x1] = mask_to_u8(self.mask[y0:y1, x0:x1])
        update_pyramid(self.mask_levels, rect)
        self.mask_version += 1
        self._edits.append((self.mask_version, tuple(int(v) for v in rect)))

    def edited_since(self, version: int) -> Rect | None:
        """The bounding rectangle of the mask changes made after ``version`` (None: none recorded)."""
        return union_rects(r for v, r in self._edits if v > version)

    def push_edit(self, edit: Edit | None) -> None:
        if edit is not None:
            self.history.push(edit)

    def undo(self) -> Rect | None:
        edit = self.history.undo(self.mask) if self.mask is not None else None
        return self._after_history(edit)

    def redo(self) -> Rect | None:
        edit = self.history.redo(self.mask) if self.mask is not None else None
        return self._after_history(edit)

    def _after_history(self, edit: Edit | None) -> Rect | None:
        if edit is None:
            return None
        rect = edit.bounds()
        self.mask_changed(rect)
        return rect

    def reset_to_prediction(self) -> Rect | None:
        """Undoably restore the predicted mask."""
        if self.mask is None or self.predicted is None:
            return None
        edit = diff_edit(self.mask, self.predicted, "Reset mask to prediction")
        if edit is None:
            return None
        self.mask[...] = self.predicted
        self.history.push(edit)
        rect = edit.bounds()
        self.mask_changed(rect)
        return rect

    # --- correction ---------------------------------------------------------------------------
    def set_correction(self, correction: Any, after_levels: list[np.ndarray], version: int) -> None:
        """Install a correction of the whole photo and its display pyramid."""
        self.correction = correction
        self.after_levels = after_levels
        self.last_update = None
        self._rendered(version)

    def update_correction(self, partial: Any, after_patch: np.ndarray, version: int) -> None:
        """Install a partial correction (``partial.rect``, rendered since the current one) and the
        display pixels of that rectangle; only the pyramid tiles under it are rebuilt."""
        self.correction = self.correction.update(partial)
        self._paste(partial.rect, after_patch)
        self._rendered(version)

    def show_preview(self, rect: Rect, after_patch: np.ndarray) -> None:
        """Show ``after_patch`` (display pixels of ``rect``) without changing the correction: the
        classical fill under a stroke while the model runs."""
        self._paste(rect, after_patch)
        self.after_version += 1

    def _paste(self, rect: Rect, after_patch: np.ndarray) -> None:
        levels = self.after_levels
        assert levels is not None
        if any(a is b for a, b in zip(levels, self.before_levels)):  # shared with the photo's: copy first
            levels = self.after_levels = [a.copy() if a is b else a for a, b in zip(levels, self.before_levels)]
        x0, y0, x1, y1 = rect
        if x1 > x0 and y1 > y0:
            levels[0][y0:y1, x0:x1] = after_patch
            update_pyramid(levels, rect)
        self.last_update = tuple(rect)

    def _rendered(self, version: int) -> None:
        self.rendered_version = version
        self._edits = [(v, r) for v, r in self._edits if v > version]
        self.after_version += 1
