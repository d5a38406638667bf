#!/usr/bin/env python3
"""Build the release artefacts into dist/ (`make dist`), offline.

    python scripts/dist.py                 # all of them into dist/
    python scripts/dist.py --out /tmp/d    # elsewhere
    python scripts/dist.py --only api      # one kind: api, server or chart (repeatable)

- phoneseller-api (gen/python): wheel + sdist of the contracts, stubs and descriptor set;
- phoneseller (the repository root): wheel + sdist of the server, the mesh, the local stack
  and the CLI, which require phoneseller-api;
- the Helm chart (helm/phoneseller) packaged as phoneseller-<chart version>.tgz.

The wheels are built with `python -m build --no-isolation`: setuptools is already in the
virtualenv, so no build environment is downloaded. The chart is packaged by the Helm engine
the chart tests render with (helm-python-sdk), which needs no helm binary. The chart reaches
the descriptor set through the symbolic link files/descriptors.binpb; packaging stores the
file the link points to, and this script checks that the archive holds that file, byte for
byte, so that `helm install phoneseller dist/phoneseller-<version>.tgz` needs nothing else.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
API_DIR = REPO / "gen" / "python"
CHART_DIR = REPO / "helm" / "phoneseller"
DESCRIPTORS = REPO / "gen" / "descriptors.binpb"
CHART_DESCRIPTORS = "files/descriptors.binpb"
KINDS = ("api", "server", "chart")


class DistError(Exception):
    """A build that did not produce what it should; printed without a traceback."""


def build_distribution(project: Path, out: Path) -> list[Path]:
    """Wheel and sdist of the Python project in `project`, written to `out`; their paths."""
    # Into a fresh folder first: what it holds afterwards is exactly what this build made,
    # whatever older artefacts `out` has.
    with tempfile.TemporaryDirectory(prefix="dist-") as tmp:
        command = [sys.executable, "-m", "build", "--no-isolation", "--outdir", tmp, str(project)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise DistError(f"building {project} failed:\n{result.stdout[-3000:]}{result.stderr}")
        made = sorted(Path(tmp).iterdir())
        if sorted(p.suffix for p in made) != [".gz", ".whl"]:
            raise DistError(
                f"building {project} made {[p.name for p in made]}, not a wheel + sdist"
            )
        return [Path(shutil.move(p, out / p.name)) for p in made]


def chart_member(archive: Path, name: str) -> tarfile.TarInfo:
    """The member `<chart>/<name>` of a packaged chart."""
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.name.split("/", 1)[-1] == name:
                return member
    raise DistError(f"{archive.name} holds no {name}")


def package_chart(out: Path) -> Path:
    """`helm package helm/phoneseller` into `out`, checked to carry the descriptor set."""
    import helm_python

    archive = Path(helm_python.package(CHART_DIR, destination=out))
    member = chart_member(archive, CHART_DESCRIPTORS)
    if not member.isfile():
        raise DistError(f"{archive.name}: {CHART_DESCRIPTORS} is not a regular file")
    with tarfile.open(archive) as tar:
        extracted = tar.extractfile(member)
        data = extracted.read() if extracted else b""
    if data != DESCRIPTORS.read_bytes():
        raise DistError(f"{archive.name}: {CHART_DESCRIPTORS} differs from {DESCRIPTORS}")
    return archive


def build(out: Path, kinds: Sequence[str] = KINDS) -> list[Path]:
    """Every artefact of `kinds` into `out`; their paths, in the order built."""
    out.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    if "api" in kinds:
        made += build_distribution(API_DIR, out)
    if "server" in kinds:
        made += build_distribution(REPO, out)
    if "chart" in kinds:
        made.append(package_chart(out))
    return made


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="where (default dist/)")
    parser.add_argument(
        "--only", action="append", choices=KINDS, help="build only this kind (repeatable)"
    )
    args = parser.parse_args(argv)
    try:
        made = build(args.out.resolve(), args.only or KINDS)
    except DistError as err:
        print(f"dist: {err}", file=sys.stderr)
        return 1
    for path in made:
        print(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
