"""A built wheel carries the data the commands read (split files, recipes, metric script, hub configurations) and
finds it when installed outside the repository."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_an_installed_wheel_lists_the_hub_configurations_it_ships(tmp_path):
    # Built from a copy: setuptools leaves build/ and *.egg-info beside the sources, and a stale build/ would
    # leak removed files into later wheels.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for name in ("modeling_centerclip", "training", "search", "hub_configs"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(tmp_path / "wheel")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(p.parent.name for p in (REPO / "hub_configs").glob("*/hub.json"))
    assert shipped and {f"training/hub_configs/{name}/{file}" for name in shipped for file in ("config.json", "hub.json")} <= names
    assert "training/splits/README.md" in names and any(n.startswith("training/configs/") for n in names)

    zipfile.ZipFile(wheel).extractall(tmp_path / "site")  # a wheel is its installed tree
    probe = ("import json, training.cli_parsers as c; "
             "print(json.dumps([str(c.HUB_CONFIGS_DIR), c.list_hub_configs()]))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site")},
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    folder, listed = json.loads(done.stdout)
    assert Path(folder) == tmp_path / "site" / "training" / "hub_configs" and listed == shipped
