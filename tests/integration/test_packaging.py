"""The package as a user installs it (issue 36 items 1 and 2): the wheel and the sdist built from the repository's
tracked files by the declared build backend, the wheel installed into a fresh virtual environment, and its `rlkit`
command run from outside the checkout. The fresh environment takes rlkit only from the wheel; the heavy
dependencies (torch, transformers, vLLM) it borrows from the test's own environment through a path entry, which
adds their directory without running that environment's .pth files (so the checkout's editable install stays out)."""

import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tracked_copy(dst: Path) -> Path:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if files.returncode != 0:
        pytest.fail(f"the packaging test builds from the tracked files and needs a git checkout: {files.stderr}")
    for name in files.stdout.splitlines():
        if (ROOT / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dst / name)
    return dst


def _build(src: Path, out: Path) -> tuple[Path, Path]:
    """The wheel and the sdist, each by the backend in a process of its own (one process building both put the
    sdist under the wheel's build directory)."""
    built = []
    for hook in ("build_wheel", "build_sdist"):
        code = f"import sys; from setuptools import build_meta as b; print('BUILT', b.{hook}(sys.argv[1]))"
        proc = subprocess.run([sys.executable, "-c", code, str(out)], cwd=src, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        built.append(out / next(x for x in proc.stdout.splitlines() if x.startswith("BUILT ")).split()[1])
    return built[0], built[1]


def test_the_wheel_installs_in_a_fresh_environment_and_its_command_runs(tmp_path):
    import rlkit

    wheel, sdist = _build(_tracked_copy(tmp_path / "src"), tmp_path / "dist")
    assert wheel.name == f"rlkit_reasoning-{rlkit.__version__}-py3-none-any.whl"
    assert sdist.name == f"rlkit_reasoning-{rlkit.__version__}.tar.gz"
    recipes = sorted(p.name for p in (ROOT / "rlkit" / "recipes").glob("*.yaml"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = f"rlkit_reasoning-{rlkit.__version__}.dist-info"
        assert f"{info}/licenses/LICENSE" in names  # the license travels with the wheel
        assert sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("rlkit/recipes/")) == recipes
        metadata = z.read(f"{info}/METADATA").decode()
        assert "Name: rlkit-reasoning" in metadata and "License-Expression: Apache-2.0" in metadata
        assert "rlkit = rlkit.cli:entry" in z.read(f"{info}/entry_points.txt").decode()
    with tarfile.open(sdist) as t:
        members = t.getnames()
        top = f"rlkit_reasoning-{rlkit.__version__}"
        assert {f"{top}/LICENSE", f"{top}/pyproject.toml", f"{top}/rlkit/recipes/grpo.yaml"} <= set(members)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                           "--no-index", str(wheel)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    away = tmp_path / "elsewhere"
    away.mkdir()
    where = subprocess.run([str(py), "-c", "import rlkit; print(rlkit.__file__)"], cwd=away, capture_output=True,
                           text=True)
    assert where.returncode == 0, where.stderr[-2000:]
    assert Path(where.stdout.strip()).is_relative_to(venv)  # rlkit from the wheel, not the checkout
    rlkit_cmd = venv / "bin" / "rlkit"
    version = subprocess.run([str(rlkit_cmd), "--version"], cwd=away, capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip() == f"rlkit {rlkit.__version__}", version
    listed = subprocess.run([str(rlkit_cmd), "recipes"], cwd=away, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert all(r.removesuffix(".yaml") in listed.stdout for r in recipes)
    comps = subprocess.run([str(rlkit_cmd), "components"], cwd=away, capture_output=True, text=True)
    assert comps.returncode == 0, comps.stderr[-2000:]
    here = subprocess.run([sys.executable, "-m", "rlkit.cli", "components"], cwd=ROOT, capture_output=True, text=True)
    # every component the checkout registers is registered from the wheel (nothing left behind in the tree)
    assert comps.stdout == here.stdout and "math_correct" in comps.stdout and "dler" in comps.stdout
