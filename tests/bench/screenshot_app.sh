#!/usr/bin/env bash
# Screenshot of RetouchFormer Studio, split before/after view, of PHOTO (default: a real acne photo
# from ../shared/data/acne-faces when it is there, else a generated portrait).
# Usage: tests/bench/screenshot_app.sh [OUT.png] [PHOTO]   (default OUT: resources/docs/screenshot.png)
# Runs the real app under Xvfb (installs it with apt-get when missing and running as root; falls
# back to Qt's offscreen platform otherwise). The app grabs its own window once the preview is
# rendered (RETOUCH_STUDIO_SCREENSHOT) and quits. The user's settings are not touched.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-resources/docs/screenshot.png}"
mkdir -p "$(dirname "$OUT")"
OUT="$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")"
PHOTO="${2:-../shared/data/acne-faces/acne04_0070.jpg}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3

# Xvfb plus the X libraries Qt's xcb platform plugin needs.
PKGS="xvfb xauth libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0
  libxcb-xinerama0 libxcb-xkb1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-xfixes0 libegl1 libgl1 libdbus-1-3"
if { ! command -v xvfb-run >/dev/null 2>&1 || ! ldconfig -p | grep -q libxcb-cursor.so.0; } \
   && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  apt-get install -y -qq $PKGS >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq $PKGS >/dev/null 2>&1; } || true
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
if [ -f "$PHOTO" ]; then
  cp "$PHOTO" "$TMP/portrait.jpg"
else
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" - "$TMP/portrait.jpg" <<'PYEOF'
import sys
from app.sample import synthetic_portrait
from engine.imageio import save_image
img, _ = synthetic_portrait(3000, 2250, seed=7)
save_image(sys.argv[1], img, quality=93)
PYEOF
fi

export RETOUCH_STUDIO_SCREENSHOT="$OUT" RETOUCH_STUDIO_SCREENSHOT_SPLIT=1
export RETOUCH_STUDIO_DATA="$TMP/data" XDG_CONFIG_HOME="$TMP/config" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if command -v xvfb-run >/dev/null 2>&1; then
  xvfb-run -a -s "-screen 0 1600x1000x24" "$PY" -m app.main "$TMP/portrait.jpg"
else
  echo "xvfb-run not found: using Qt's offscreen platform" >&2
  QT_QPA_PLATFORM=offscreen "$PY" -m app.main "$TMP/portrait.jpg"
fi
echo "$OUT"
