#!/usr/bin/env python3
"""Build the one-folder RetouchFormer Studio bundle with PyInstaller.

::

    python3 packaging/build.py                       # CPU bundle, isolated build venv
    python3 packaging/build.py --variant cuda        # CUDA bundle
    python3 packaging/build.py --use-current-env     # build with the running Python's packages
    python3 packaging/build.py --check               # ... then run the bundle's --self-test

By default a build venv is made at ``packaging/build/venv-<variant>``; torch is installed for the
variant (CPU: from the PyTorch CPU index on Linux/Windows, so no CUDA libraries come along; CUDA:
from PyPI on Linux, ``--torch-index-url`` elsewhere), then the app's other dependencies from
pyproject.toml and PyInstaller. The bundle lands in ``packaging/dist/<variant>/RetouchFormer Studio/``.
Uses only the standard library, so any Python >= 3.10 can run it.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

PACKAGING = Path(__file__).resolve().parent
ROOT = PACKAGING.parent
SPEC = PACKAGING / "retouch_studio.spec"
BUNDLE_NAME = "RetouchFormer Studio"  # == bundle_config.BUNDLE_NAME (asserted by tests)
PYINSTALLER_REQ = "pyinstaller>=6.11"  # 6.11: torch hook symlink suppression
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: torch version the app is tested with (.ci/run); used when the running Python has no torch.
TESTED_TORCH = "2.13.0"


class BuildError(RuntimeError):
    pass


def _run(cmd: list[str], **kw) -> None:
    print("+ " + " ".join(f'"{c}"' if " " in c else c for c in cmd), flush=True)
    result = subprocess.run(cmd, **kw)
    if result.returncode != 0:
        raise BuildError(f"'{Path(cmd[0]).name} {' '.join(cmd[1:3])} ...' failed with exit status {result.returncode}.")


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _runtime_requirements() -> list[str]:
    """pyproject.toml's [project] dependencies other than torch (installed per variant)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
        block = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, re.S | re.M)
        if block is None:
            raise BuildError("pyproject.toml has no [project] dependencies list.") from None
        deps = re.findall(r'"([^"]+)"', block.group(1))
    else:
        deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    return [d for d in deps if not re.match(r"torch\b", d.strip())]


def _default_torch_version() -> str:
    """The running Python's torch version without its local tag (2.13.0+cpu -> 2.13.0), else TESTED_TORCH."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch").split("+")[0]
    except PackageNotFoundError:
        return TESTED_TORCH


def _torch_install_args(args: argparse.Namespace) -> list[str]:
    req = f"torch=={args.torch_version}" if args.torch_version else "torch"
    index = args.torch_index_url
    if index is None:  # defaults per variant and platform
        index = CPU_INDEX if args.variant == "cpu" and sys.platform != "darwin" else ""
    return [req] + (["--index-url", index] if index else [])


def make_build_env(args: argparse.Namespace) -> Path:
    """Create (or reuse) the isolated build venv; return its Python."""
    venv = Path(args.venv) if args.venv else PACKAGING / "build" / f"venv-{args.variant}"
    py = _venv_python(venv)
    if not py.exists():
        _run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check"]
    _run(pip + _torch_install_args(args))
    _run(pip + _runtime_requirements() + [PYINSTALLER_REQ])
    return py


def ensure_pyinstaller(py: Path) -> None:
    probe = subprocess.run([str(py), "-c", "import PyInstaller"], capture_output=True)
    if probe.returncode != 0:
        _run([str(py), "-m", "pip", "install", "--disable-pip-version-check", PYINSTALLER_REQ])


def check_torch_variant(py: Path, variant: str) -> None:
    """Refuse to build a 'cpu' bundle from a CUDA torch (or the reverse)."""
    out = subprocess.run([str(py), "-c", "import torch; print(torch.__version__, torch.version.cuda)"],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        raise BuildError(f"torch does not import in the build environment: {out.stderr.strip().splitlines()[-1:]}")
    version, cuda = out.stdout.split()
    print(f"build environment: torch {version}, CUDA {cuda}", flush=True)
    if variant == "cpu" and cuda != "None":
        raise BuildError(f"torch {version} in the build environment is a CUDA build; install the CPU build "
                         f"(--index-url {CPU_INDEX}) or build --variant cuda.")
    if variant == "cuda" and cuda == "None":
        raise BuildError(f"torch {version} in the build environment is a CPU-only build; install a CUDA build "
                         "(e.g. --torch-index-url https://download.pytorch.org/whl/cu128) or build --variant cpu.")


_PREFLIGHT = """
import sys
sys.path.insert(0, sys.argv[1])
import bundle_config as c
try:
    c.variant(); c.model_datas(required=[c.default_model_name()]); c.detector_datas()
except c.BundleError as exc:
    sys.exit(str(exc))
"""


def preflight(py: Path, env: dict[str, str]) -> None:
    """What the spec will collect exists (weights, model card, face detector): one-line errors, no traceback."""
    out = subprocess.run([str(py), "-c", _PREFLIGHT, str(PACKAGING)], env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        raise BuildError(lines[-1] if lines else f"the pre-build check failed with exit status {out.returncode}.")


def bundle_dir(dist: Path) -> Path:
    return dist / (f"{BUNDLE_NAME}.app" if sys.platform == "darwin" else BUNDLE_NAME)


def executable(bundle: Path, name: str) -> Path:
    if sys.platform == "darwin":
        return bundle / "Contents" / "MacOS" / name
    return bundle / (f"{name}.exe" if os.name == "nt" else name)


def du(path: Path) -> int:
    """Bytes on disk of a folder (no symlink following)."""
    total = 0
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def self_test(bundle: Path) -> int:
    env = {**os.environ, "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen")}
    env.pop("RETOUCH_RESOURCES", None)  # the bundle must find its own weights
    t0 = time.perf_counter()
    rc = subprocess.run([str(executable(bundle, "retouch-studio")), "--self-test"], env=env).returncode
    print(f"bundled --self-test exited {rc} after {time.perf_counter() - t0:.1f} s", flush=True)
    return rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build the one-folder RetouchFormer Studio bundle with PyInstaller.")
    p.add_argument("--variant", choices=["cpu", "cuda"], default="cpu", help="torch build to bundle (default cpu)")
    p.add_argument("--use-current-env", action="store_true",
                   help="build with this Python's installed packages instead of an isolated venv (PyInstaller is installed if missing)")
    p.add_argument("--venv", help="build venv folder (default packaging/build/venv-VARIANT)")
    p.add_argument("--torch-version", default=_default_torch_version(),
                   help=f"torch version for the build venv (default: this Python's torch, else {TESTED_TORCH}); '' = newest")
    p.add_argument("--torch-index-url", default=None,
                   help=f"pip index for torch; default {CPU_INDEX} for cpu (PyPI on macOS), PyPI for cuda; '' = PyPI")
    p.add_argument("--models-dir", help="folder with the *.safetensors + MODEL_CARD.md to ship (default resources/models)")
    p.add_argument("--dist", help="output folder (default packaging/dist/VARIANT)")
    p.add_argument("--clean", action="store_true", help="discard PyInstaller's cache and work folder first")
    p.add_argument("--check", action="store_true", help="run the bundle's --self-test after building")
    args = p.parse_args(argv)

    dist = Path(args.dist) if args.dist else PACKAGING / "dist" / args.variant
    work = PACKAGING / "build" / f"work-{args.variant}"
    try:
        py = Path(sys.executable) if args.use_current_env else make_build_env(args)
        if args.use_current_env:
            ensure_pyinstaller(py)
        check_torch_variant(py, args.variant)
        env = {**os.environ, "RETOUCH_BUILD_VARIANT": args.variant, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        if args.models_dir:
            env["RETOUCH_MODELS_DIR"] = str(Path(args.models_dir).resolve())
        preflight(py, env)
        cmd = [str(py), "-m", "PyInstaller", str(SPEC), "--noconfirm", "--distpath", str(dist), "--workpath", str(work)]
        if args.clean:
            cmd.append("--clean")
        t0 = time.perf_counter()
        _run(cmd, env=env, cwd=ROOT)
        bundle = bundle_dir(dist)
        print(f"built {bundle} in {time.perf_counter() - t0:.0f} s; {du(bundle) / 2**20:.0f} MiB on disk", flush=True)
        if args.check and self_test(bundle) != 0:
            return 1
        return 0
    except BuildError as exc:
        print(f"build.py: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
