"""transformers' own model test mixins (`ModelTesterMixin`, `ConfigTester`), for the installed transformers version.

They are not part of the transformers wheel. The set-up downloads the source distribution of the installed version
from the package index once (`pip download`), extracts `tests/test_modeling_common.py` and
`tests/test_configuration_common.py` into a cache folder as the package `transformers_tests`, and imports them from
there; nothing of transformers' test code is kept in this repository. The source distribution leaves out a few
modules those two files import (`generation/test_utils.py`, `exporters/test_export.py`,
`utils/test_configuration_utils.py`): they get stand-ins, listed in `STAND_INS`, so those mixins are simply absent.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import transformers


FILES = ("test_modeling_common.py", "test_configuration_common.py")
CACHE = Path(
    os.environ.get("MINILLAVA_TRANSFORMERS_TESTS_CACHE", Path.home() / ".cache" / "minillava" / "transformers-tests")
)
# What the stand-ins define for the names the source distribution does not ship.
STAND_INS = {
    # GenerationTesterMixin: not in the sdist; tests/test_generation.py covers generation instead.
    "GenerationTesterMixin": "class GenerationTesterMixin:\n    pass\n",
    # ExportTesterMixin: the torch.export tests are not in the sdist either (the base class of ModelTesterMixin).
    "ExportTesterMixin": "class ExportTesterMixin:\n    pass\n",
    # config_common_kwargs: only read for configs without sub-configs; both of ours are composite.
    "config_common_kwargs": "config_common_kwargs = {}\n",
}


class Unavailable(RuntimeError):
    """The mixins of the installed transformers version could not be had (no network, no such sdist, ...)."""


def _download(version: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    found = sorted(folder.glob(f"transformers-{version}.tar.gz"))
    if found:
        return found[0]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", str(folder)]
    proc = subprocess.run(
        [*command, f"transformers=={version}"], capture_output=True, text=True, timeout=600, check=False
    )
    found = sorted(folder.glob(f"transformers-{version}.tar.gz"))
    if proc.returncode != 0 or not found:
        raise Unavailable(f"pip could not download the transformers {version} sdist: {proc.stderr.strip()[-500:]}")
    return found[0]


def _extract(sdist: Path, package: Path) -> None:
    with tarfile.open(sdist) as archive:
        for name in FILES:
            member = next((m for m in archive.getmembers() if m.name.endswith(f"/tests/{name}")), None)
            if member is None:
                raise Unavailable(f"{sdist.name} has no tests/{name}")
            (package / name).write_bytes(archive.extractfile(member).read())


def _write_stand_ins(package: Path) -> None:
    """A module for each relative import of the extracted files that the sdist does not ship."""
    (package / "__init__.py").write_text("")
    for name in FILES:
        source = (package / name).read_text()
        for module, names in re.findall(r"^from \.([\w.]+) import (\([^)]*\)|[^\n]+)", source, re.M):
            path = package.joinpath(*module.split(".")).with_suffix(".py")
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            for parent in path.parents:
                if parent == package:
                    break
                (parent / "__init__.py").touch()
            wanted = [n.strip() for n in names.strip("()").replace("\n", ",").split(",") if n.strip()]
            missing = [n for n in wanted if n not in STAND_INS]
            if missing:
                raise Unavailable(
                    f"{name} imports {missing} from .{module}, which the sdist lacks and has no stand-in"
                )
            path.write_text("".join(STAND_INS[n] for n in wanted))


def load_mixins():
    """`(test_modeling_common, test_configuration_common)` of the installed transformers version."""
    version = transformers.__version__
    root = CACHE / version
    package = root / "transformers_tests"
    complete = package / ".complete"  # written last: a set-up killed half-way is redone
    if not complete.is_file():
        package.mkdir(parents=True, exist_ok=True)
        _extract(_download(version, CACHE / "sdists"), package)
        _write_stand_ins(package)
        complete.touch()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    modeling = importlib.import_module("transformers_tests.test_modeling_common")
    configuration = importlib.import_module("transformers_tests.test_configuration_common")
    return modeling, configuration
