"""A Python environment without skillkd: a venv that sees this interpreter's installed packages (torch,
transformers, accelerate, onnxruntime) as plain paths, so skillkd's editable finder is not run and only what
is installed there as files can be imported; scripts run from a directory outside the repository."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path


def fresh_python(tmp_path: Path) -> Path:
    """The interpreter of a new venv under `tmp_path` that can import the installed packages but not
    skillkd."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # plain paths: a .pth line that is a path adds it to sys.path without running the .pth files inside it
    # (skillkd's editable install is such a .pth)
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    (purelib / "system_site.pth").write_text("".join(p + "\n" for p in sorted(paths)))
    return python


def run_fresh(
    python: Path, script: str, args: list[str], tmp_path: Path, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    """Run `script` (source text) with `python` from an empty directory outside the repository, offline."""
    path = tmp_path / "fresh_script.py"
    path.write_text(script)
    work = tmp_path / "cwd"
    work.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), OMP_NUM_THREADS="1")
    return subprocess.run(
        [str(python), str(path), *args], cwd=work, env=env, capture_output=True, text=True, timeout=timeout
    )
