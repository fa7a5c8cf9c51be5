"""Packaging: one `sdtoolkit` namespace with trainers/, pipelines/ and assets/ mapped in by setuptools package-dir."""

import pathlib
import subprocess
import sys
import zipfile

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_python_package_folder_is_listed():
    config = _pyproject()["tool"]["setuptools"]
    listed = set(config["packages"])
    package_dir = config["package-dir"]
    for package, folder in package_dir.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            name = ".".join([package, *relative.parts]) if relative.parts else package
            if any(part.startswith(".") or part == "__pycache__" for part in relative.parts):
                continue
            assert name in listed, f"{init.parent} is a package but {name!r} is not in pyproject's packages list"


def test_installed_namespace_maps_trainers_and_pipelines():
    import sdtoolkit.pipelines
    import sdtoolkit.trainers

    assert pathlib.Path(sdtoolkit.trainers.__file__).parent == ROOT / "trainers"
    assert pathlib.Path(sdtoolkit.pipelines.__file__).parent == ROOT / "pipelines"


@pytest.mark.slow
def test_wheel_contains_one_namespace(tmp_path):
    """`pip install .` (a wheel) carries trainers/, pipelines/ and assets/ inside the sdtoolkit package."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
    )
    wheel = next(tmp_path.glob("sdtoolkit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for expected in (
        "sdtoolkit/trainers/__init__.py",
        "sdtoolkit/pipelines/__init__.py",
        "sdtoolkit/assets/__init__.py",
    ):
        assert expected in names
    assert not any(name.startswith(("trainers/", "pipelines/", "assets/")) for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "sdtoolkit = sdtoolkit.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
