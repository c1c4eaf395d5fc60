"""Persistent preferences (QSettings): device, default strength, overlay, export defaults, recent files."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from PySide6.QtCore import QSettings

ORG = "RetouchFormer"
APP = "RetouchFormer Studio"
EXPORT_FORMATS = ("keep", "jpeg", "png", "tiff")  # "keep" = same format as the original
DEVICES = ("auto", "cpu", "cuda")
MAX_RECENT = 10


@dataclass
class Preferences:
    device: str = "auto"
    default_strength: float = 1.0
    overlay_color: str = "#ff3b6b"
    overlay_opacity: float = 0.45
    export_format: str = "keep"
    export_quality: int = 95
    brush_size: float = 60.0
    brush_hardness: float = 0.5
    brush_opacity: float = 1.0
    recent_files: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, settings: QSettings | None = None) -> "Preferences":
        s = settings or QSettings(ORG, APP)
        p = cls()
        for f in fields(cls):
            if not s.contains(f.name):
                continue
            raw = s.value(f.name)
            default = getattr(p, f.name)
            try:
                if isinstance(default, list):
                    val = [str(x) for x in (raw if isinstance(raw, list) else [raw] if raw else [])]
                elif isinstance(default, bool):
                    val = str(raw).lower() in ("1", "true", "yes")
                else:
                    val = type(default)(raw)
            except (TypeError, ValueError):
                continue
            setattr(p, f.name, val)
        p.device = p.device if p.device in DEVICES else "auto"
        p.export_format = p.export_format if p.export_format in EXPORT_FORMATS else "keep"
        p.default_strength = min(max(p.default_strength, 0.0), 1.0)
        p.overlay_opacity = min(max(p.overlay_opacity, 0.0), 1.0)
        p.export_quality = min(max(p.export_quality, 1), 100)
        return p

    def save(self, settings: QSettings | None = None) -> None:
        s = settings or QSettings(ORG, APP)
        for k, v in asdict(self).items():
            s.setValue(k, v)
        s.sync()

    def add_recent(self, path: str) -> None:
        self.recent_files = [path] + [p for p in self.recent_files if p != path]
        del self.recent_files[MAX_RECENT:]
