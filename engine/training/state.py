"""The training state committed to the repository, so that training continues from session to session.

A run directory's ``last.pt`` holds everything a resume needs (model with H̄, discriminator,
optimisers, schedules, step, random generators, configuration) in float32: about 45 MB for the
``small`` model. The committed copy, ``resources/training/state.pt`` (:data:`DEFAULT_STATE`) with
``state-optim.pt`` beside it, is the same dictionary made compact: weights in float16, Adam's
moments in bfloat16 (float16 would flush the small second moments to zero and blow up the first
update after a resume), and the rest as it is: about 9 + 14 MB, each file small enough for what
a lent GPU machine sends back (16 MiB a file). :func:`expand` turns it back into a ``last.pt``-shaped dictionary.

    python -m engine.training.state export runs/main/last.pt [resources/training/state.pt]
    python -m engine.training.state show [resources/training/state.pt]
    python -m engine.training.state weights [resources/training/state.pt] runs/state/model.safetensors

``retouch train --state FILE`` resumes from FILE when its run directory has no ``last.pt`` yet and
rewrites FILE at every checkpoint.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

from engine.paths import resources_dir

DEFAULT_STATE = resources_dir() / "training" / "state.pt"
_WEIGHTS = ("model", "disc")
_OPTIMISERS = ("opt_g", "opt_d")


def _cast(tree: Any, dtype: torch.dtype) -> Any:
    if torch.is_tensor(tree):
        return tree.detach().to("cpu", dtype) if tree.is_floating_point() else tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: _cast(v, dtype) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_cast(v, dtype) for v in tree)
    return tree


def _cast_optimiser(opt: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """Moments to ``dtype``; Adam's step counters stay float32 (they count to millions)."""
    state = {
        i: {k: (v.detach().cpu() if k == "step" else _cast(v, dtype)) for k, v in s.items()}
        for i, s in opt["state"].items()
    }
    return {"state": state, "param_groups": opt["param_groups"]}


def compact(state: dict[str, Any]) -> dict[str, Any]:
    """A ``last.pt`` dictionary with weights in float16 and optimiser moments in bfloat16."""
    out = dict(state)
    for key in _WEIGHTS:
        out[key] = _cast(state[key], torch.float16)
    for key in _OPTIMISERS:
        out[key] = _cast_optimiser(state[key], torch.bfloat16)
    out["compact"] = True
    return out


def expand(state: dict[str, Any]) -> dict[str, Any]:
    """Back to float32 everywhere (a no-op for a full-precision ``last.pt``)."""
    if not state.get("compact"):
        return state
    out = dict(state)
    for key in _WEIGHTS:
        out[key] = _cast(state[key], torch.float32)
    for key in _OPTIMISERS:
        out[key] = _cast_optimiser(state[key], torch.float32)
    out.pop("compact")
    return out


def optimiser_path(path: str | Path) -> Path:
    """The companion file holding the optimisers' moments (``state.pt`` -> ``state-optim.pt``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}-optim{path.suffix}")


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_state(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``compact(state)`` atomically, in two files each under 16 MiB for the small model
    (what a lent GPU machine can send back): ``path`` (weights, step, generators, history) and
    :func:`optimiser_path` (the optimisers' moments)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    small = compact(state)
    _atomic_save({k: small[k] for k in _OPTIMISERS if k in small}, optimiser_path(path))
    _atomic_save({k: v for k, v in small.items() if k not in _OPTIMISERS}, path)
    return path


def load_state(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a state (compact or not) and return it in float32; SystemExit with one sentence on a bad file."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - truncated or not a torch file at all
        raise SystemExit(f"{path} is not a readable training state: {type(exc).__name__}.") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise SystemExit(f"{path} is not a training state (no model and step inside).")
    if state.get("compact") and not all(k in state for k in _OPTIMISERS):
        companion = optimiser_path(path)
        try:
            state.update(torch.load(companion, map_location=device, weights_only=False))
        except Exception as exc:  # noqa: BLE001
            raise SystemExit(f"{companion}, the optimisers' half of {path.name}, is missing or unreadable ({type(exc).__name__}).") from None
    return expand(state)


def export_weights(state: dict[str, Any], out: str | Path) -> Path:
    """Write a state's model (the generator with H and H̄ and the prior) as a weights file that
    ``engine.model.load_model`` reads; the step and history go into its metadata."""
    from engine.model import ModelConfig, RetouchFormer, save_model

    model = RetouchFormer(ModelConfig.from_dict(state["config"]))
    model.load_state_dict(state["model"])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return save_model(model, out, extra={"step": state["step"], "history": state.get("history", [])})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.training.state", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="compact a run's last.pt into the committed state file")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("out", type=Path, nargs="?", default=DEFAULT_STATE)
    s = sub.add_parser("show", help="print what a state holds")
    s.add_argument("path", type=Path, nargs="?", default=DEFAULT_STATE)
    w = sub.add_parser("weights", help="the state's generator as model weights (.safetensors), to evaluate or ship")
    w.add_argument("paths", type=Path, nargs="+", metavar="[STATE] OUT")
    args = p.parse_args(argv)
    if args.cmd == "weights":
        if len(args.paths) > 2:
            p.error("weights takes at most a state and an output file")
        state_path, out = (DEFAULT_STATE, args.paths[0]) if len(args.paths) == 1 else args.paths
        print(export_weights(load_state(state_path), out))
        return 0
    if args.cmd == "export":
        out = save_state(load_state(args.checkpoint), args.out)
        size = (out.stat().st_size + optimiser_path(out).stat().st_size) / 2**20
        print(f"{out} (+ {optimiser_path(out).name}): step {torch.load(out, weights_only=False)['step']}, {size:.1f} MiB")
    else:
        st = load_state(args.path)
        size = (args.path.stat().st_size + optimiser_path(args.path).stat().st_size) / 2**20
        print(f"{args.path}: step {st['step']}, config {st['config'].get('name')}, {size:.1f} MiB with its optimiser file")
        for k in ("history",):
            for line in st.get(k, []):
                print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
