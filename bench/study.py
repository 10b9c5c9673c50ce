"""What the single-question CPU studies (bench/strokes.py, bench/tile_skipping.py) share: running a
measurement in a child process with its own environment (settings the kernels read once per
process), the run's description, and writing results.json and results.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from bench import results_folder_name
from bench.run import REPO, device_name, git_commit


def run_child(script: str, arguments: list[str], env: dict[str, str]) -> dict:
    """The JSON that ``script --child ARGUMENTS`` prints, run with ``env`` added to this environment."""
    command = [sys.executable, script, "--child", *arguments]
    child = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{child.stderr[-3000:]}")
    return json.loads(child.stdout)


def run_meta(device: torch.device) -> dict:
    commit, dirty = git_commit()
    return {"device": device.type, "device_name": device_name(device), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "git_commit": commit, "git_dirty": dirty}


def describe(meta: dict) -> str:
    """One line: torch, threads and the code measured."""
    dirty = " (uncommitted changes)" if meta["git_dirty"] else ""
    return f"torch {meta['torch']}, {meta['threads']} threads, splatkern at {meta['git_commit']}{dirty}."


def write_results(out: Path | None, study: str, meta: dict, measured: dict, lines: list[str]) -> Path:
    """results.json ({"meta", **measured}) and results.md (``lines``) into ``out``, by default
    bench/results/cpu <model>/<study>/ (a GPU's: bench/results/<model>/<study>/); prints the Markdown
    and returns the folder."""
    folder = meta["device_name"] if meta.get("device") == "cuda" else f"cpu {meta['device_name']}"
    out = out or REPO / "bench" / "results" / results_folder_name(folder) / study
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, **measured}, indent=2) + "\n")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out
