"""An installed copy, not a checkout: the wheel built from the sources the Docker image installs
(pyproject.toml, README.md, xattn/, studies/), installed into a fresh virtual environment and run
from a folder outside the repository, does what a user does: help, a study, its report, export,
evaluate. What it needs at run time beyond Python code (the report's template, the bundled specs)
must be package data, or one of these commands fails.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def image_sources() -> list[str]:
    """What the Dockerfile's `source` stage copies, so the wheel here is built from what the image installs."""
    stage = (REPO / "Dockerfile").read_text().split(" AS source\n", 1)[1].split("\nFROM ", 1)[0]
    return [path for paths in re.findall(r"^COPY (.+) \S+$", stage, re.MULTILINE) for path in paths.split()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(folder, run): `run(*args)` runs the `xattn` of a fresh environment holding only the wheel, in
    `folder`, outside the checkout. Its dependencies are this environment's, seen through a .pth
    line rather than installed again (no network, seconds)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    sources = image_sources()
    assert {"pyproject.toml", "xattn"} <= set(sources), sources
    for name in sources:
        if (REPO / name).is_dir():
            # symlinks=True: xattn/specs stays the link to studies/ that the checkout holds.
            shutil.copytree(REPO / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    # No build isolation: it would fetch setuptools from an index; this environment has it.
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", root / "dist", source],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0 and "No module named" in built.stderr:
        pytest.skip(f"cannot build a wheel here: {built.stderr.strip().splitlines()[-1]}")
    assert built.returncode == 0, built.stderr
    (wheel,) = (root / "dist").glob("xattn-*.whl")

    environment = root / "env"
    venv.create(environment, with_pip=False)
    bin_folder = environment / ("Scripts" if os.name == "nt" else "bin")
    python = bin_folder / "python"
    site_packages = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # Plain path lines, not `import site; site.addsitedir(...)`: the .pth files there (an editable
    # xattn's finder among them) stay unread, so the only xattn to import is the wheel's.
    dependencies = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site_packages / "dependencies.pth").write_text("".join(f"{path}\n" for path in sorted(dependencies)))
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_folder}{os.pathsep}{env.get('PATH', '')}"
    subprocess.run(
        [python, "-m", "pip", "--disable-pip-version-check", "-q", "install", "--no-deps", "--no-index", wheel],
        check=True,
        env=env,
    )
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()

    def run(*args, timeout=300):
        process = subprocess.run(
            [bin_folder / "xattn", *map(str, args)],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert process.returncode == 0, f"xattn {' '.join(map(str, args))}:\n{process.stdout}\n{process.stderr}"
        return process

    imported = subprocess.run(
        [python, "-c", "import xattn; print(xattn.__file__)"], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert Path(imported.stdout.strip()).is_relative_to(site_packages), imported.stdout + imported.stderr
    return elsewhere, run


@pytest.mark.e2e
def test_the_installed_wheel_runs_what_a_user_runs(installed):
    elsewhere, run = installed
    assert "study" in run("--help").stdout

    # A bundled spec by name: the wheel user has no studies/ folder.
    study = run("study", "run", "quickstart", "--trials", 1, "--max-epochs", 1, "--workspace", "ws", "--json")
    result = json.loads(study.stdout.strip().splitlines()[-1])
    assert result["trial_counts"] == {"finished": 1}

    run("report", "quickstart", "--workspace", "ws", "--out", "report.html")
    page = (elsewhere / "report.html").read_text()
    assert "<html" in page and result["parent_run_id"] in page

    run("export", "quickstart", "--workspace", "ws", "--out", "export")
    evaluated = json.loads(run("evaluate", "export", "--json").stdout.strip().splitlines()[-1])
    assert evaluated["metrics"]["test_pearson"] == pytest.approx(result["best"]["metrics"]["test_pearson"], abs=1e-4)


def test_a_misspelt_spec_name_is_one_line_naming_the_bundled_ones(tmp_path):
    process = subprocess.run(
        [sys.executable, "-m", "xattn.cli", "study", "run", "quickstar", "--workspace", tmp_path / "ws"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert process.returncode == 2
    (line,) = process.stderr.strip().splitlines()
    assert "did you mean 'quickstart'?" in line and "s100-fc" in line
    assert not (tmp_path / "ws").exists()
