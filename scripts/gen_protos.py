#!/usr/bin/env python3
"""Generate the Python code and the descriptor set of the protobuf contracts, offline.

Run it from anywhere with the project's virtualenv Python:

    python scripts/gen_protos.py               # regenerate gen/ from protos/
    python scripts/gen_protos.py --check       # exit 1 and list the files if gen/ drifted
    python scripts/gen_protos.py --deps-only   # only prepare .build/proto-deps (before buf)
    python scripts/gen_protos.py --lint        # buf lint + buf format --diff --exit-code
    python scripts/gen_protos.py --breaking main   # buf breaking against a git ref

buf cannot reach its registry here, so buf.yaml has no `deps:`. Instead this script copies the
googleapis sources we import (google/api, google/rpc) from the installed
googleapis-common-protos package into the git-ignored `.build/proto-deps`, which buf.yaml lists
as a second module and protoc takes with `-I`. The well-known types (google/protobuf/*) need no
copy: buf has them built in and protoc finds them in grpc_tools' bundled include folder.

Outputs, all committed and all deterministic:
- gen/python/phoneseller/**: `*_pb2.py` + `*_pb2.pyi` (protoc), `*_pb2_grpc.py` (grpc_tools),
  `*_pb2_grpc.pyi` (mypy-protobuf), empty `__init__.py` files and `py.typed`, plus a copy of
  each `.proto` beside its stubs and of the descriptor set (`phoneseller/descriptors.binpb`):
  gen/python is the phoneseller-api distribution (gen/python/pyproject.toml), which ships them;
- gen/descriptors.binpb: a FileDescriptorSet with imports and source info, for Envoy's
  grpc_json_transcoder.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.metadata
import importlib.util
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from google.protobuf.descriptor_pb2 import FileDescriptorSet

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "protos"
DEPS_DIR = REPO / ".build" / "proto-deps"
GEN_DIR = REPO / "gen"
PY_PACKAGE = "phoneseller"
PY_OUT_REL = Path("python")
DESCRIPTORS_REL = Path("descriptors.binpb")

# googleapis files copied into DEPS_DIR even when no contract imports them yet: the HTTP
# annotations (gateway transcoding) and the rich error model the services return.
SEED_DEPS = ("google/api/annotations.proto", "google/api/http.proto", "google/rpc/*.proto")
# Imports that need no copy: the well-known types (built into buf, bundled with grpc_tools)
# and our own contracts.
NO_COPY_PREFIXES = ("google/protobuf/", f"{PY_PACKAGE}/")

IMPORT_RE = re.compile(r'^\s*import\s+(?:public\s+|weak\s+)?"([^"]+)"\s*;', re.MULTILINE)


class GenError(Exception):
    """A problem the user can fix; printed without a traceback."""


# --------------------------------------------------------------------------------------------
# Tools and paths
# --------------------------------------------------------------------------------------------


def venv_tool(name: str) -> Path:
    """Find an executable next to this Python (the virtualenv's bin) or else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return beside
    found = shutil.which(name)
    if found is None:
        raise GenError(f"{name} not found; install the dev tools: pip install -e '.[dev]'")
    return Path(found)


def package_dir(module: str) -> Path:
    """The folder of an installed module's package, without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise GenError(f"module {module} is not installed; pip install -e '.[dev]'")
    return Path(spec.origin).parent


def googleapis_root() -> Path:
    """The site-packages folder holding googleapis-common-protos' google/api/*.proto."""
    return package_dir("google.api.annotations_pb2").parent.parent


def grpc_tools_include() -> Path:
    """grpc_tools' bundled include folder with the well-known types (google/protobuf)."""
    return package_dir("grpc_tools") / "_proto"


def contract_files() -> list[str]:
    """Our .proto files relative to protos/, sorted so that every run sees the same order."""
    files = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
    if not files:
        raise GenError(f"no .proto files under {PROTO_ROOT}")
    return files


def tool_versions() -> str:
    """The versions of the generators, which are written into the generated code."""
    names = ("grpcio-tools", "protobuf", "mypy-protobuf", "googleapis-common-protos")
    parts = []
    for name in names:
        try:
            parts.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{name} (missing)")
    return ", ".join(parts)


def run(cmd: Sequence[str | Path], *, cwd: Path = REPO) -> int:
    """Run a command in the foreground, its output going to ours; return its exit code."""
    return subprocess.run([str(c) for c in cmd], cwd=cwd, check=False).returncode


# --------------------------------------------------------------------------------------------
# Dependencies for buf and protoc
# --------------------------------------------------------------------------------------------


def imports_of(path: Path) -> list[str]:
    """The files a .proto file imports, as written in its import statements."""
    return IMPORT_RE.findall(path.read_text(encoding="utf-8"))


def needed_deps(source_root: Path) -> list[str]:
    """Every googleapis file to copy: the seeds, what our contracts import, and their imports."""
    pending: list[str] = []
    for pattern in SEED_DEPS:
        matches = sorted(source_root.glob(pattern))
        if not matches:
            raise GenError(f"{pattern} not found in {source_root} (googleapis-common-protos)")
        pending += [p.relative_to(source_root).as_posix() for p in matches]
    for rel in contract_files():
        pending += imports_of(PROTO_ROOT / rel)
    wanted: set[str] = set()
    while pending:
        name = pending.pop()
        if name in wanted or name.startswith(NO_COPY_PREFIXES):
            continue
        source = source_root / name
        if not source.is_file():
            raise GenError(f"imported file {name} is not in googleapis-common-protos")
        wanted.add(name)
        pending += imports_of(source)
    return sorted(wanted)


def prepare_deps() -> Path:
    """Mirror the needed googleapis sources into DEPS_DIR; touch only what changed."""
    source_root = googleapis_root()
    wanted = needed_deps(source_root)
    for name in wanted:
        data = (source_root / name).read_bytes()
        target = DEPS_DIR / name
        if not target.is_file() or target.read_bytes() != data:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    keep = set(wanted)
    for path in sorted(DEPS_DIR.rglob("*"), reverse=True):
        rel = path.relative_to(DEPS_DIR).as_posix()
        if path.is_file() and rel not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return DEPS_DIR


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def protoc_command(out: Path) -> list[str]:
    """The grpc_tools.protoc command that writes all outputs below `out`."""
    py_out = out / PY_OUT_REL
    mypy_grpc = venv_tool("protoc-gen-mypy_grpc")
    return [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I",
        "protos",
        "-I",
        DEPS_DIR.relative_to(REPO).as_posix(),
        "-I",
        str(grpc_tools_include()),
        f"--plugin=protoc-gen-mypy_grpc={mypy_grpc}",
        f"--python_out={py_out}",
        f"--pyi_out={py_out}",
        f"--grpc_python_out={py_out}",
        f"--mypy_grpc_out=quiet:{py_out}",
        *contract_files(),
    ]


#: Not imported by the contracts, but the gateway's transcoder needs them to turn a gRPC error
#: (google.rpc.Status with ErrorInfo, BadRequest, …) into a JSON body.
ERROR_PROTOS = ("google/rpc/status.proto", "google/rpc/error_details.proto")


def descriptor_command(out: Path) -> list[str]:
    """The protoc command that writes the descriptor set for Envoy's grpc_json_transcoder."""
    return [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I",
        "protos",
        "-I",
        DEPS_DIR.relative_to(REPO).as_posix(),
        "-I",
        str(grpc_tools_include()),
        f"--descriptor_set_out={out / DESCRIPTORS_REL}",
        "--include_imports",
        "--include_source_info",
        *contract_files(),
        *ERROR_PROTOS,
    ]


def finish_python_tree(out: Path) -> None:
    """Tidy protoc's Python output below `out` into importable, typed packages.

    grpc_tools writes a `_pb2_grpc` module for every file, also for those without a service
    (the events); those modules hold nothing but a version check, so they are dropped. Every
    folder gets an empty `__init__.py` (regular packages, as setuptools and mypy want them)
    and the tree gets `py.typed` (PEP 561).
    """
    py_out = out / PY_OUT_REL
    descriptors = FileDescriptorSet.FromString((out / DESCRIPTORS_REL).read_bytes())
    for file in descriptors.file:
        if file.name.startswith(f"{PY_PACKAGE}/") and not file.service:
            stem = py_out / file.name.removesuffix(".proto")
            for suffix in (".py", ".pyi"):
                Path(f"{stem}_pb2_grpc{suffix}").unlink()
    package_root = py_out / PY_PACKAGE
    for folder in [package_root, *sorted(p for p in package_root.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").write_bytes(b"")
    (package_root / "py.typed").write_bytes(b"")
    # The phoneseller-api distribution is built from gen/python alone (an sdist cannot reach
    # ../../protos), so the sources and the descriptor set it ships are copied in, where
    # `protoc -I site-packages` finds them as googleapis-common-protos' are found.
    for rel in contract_files():
        shutil.copyfile(PROTO_ROOT / rel, py_out / rel)
    shutil.copyfile(out / DESCRIPTORS_REL, package_root / DESCRIPTORS_REL.name)


def generate(out: Path) -> None:
    """Generate everything into the empty folder `out` (laid out like gen/)."""
    prepare_deps()
    (out / PY_OUT_REL).mkdir(parents=True)
    if run(protoc_command(out)) != 0 or run(descriptor_command(out)) != 0:
        raise GenError("protoc failed")
    finish_python_tree(out)


def managed_files(root: Path) -> dict[str, Path]:
    """The files this script owns below a gen/-like root, keyed by their relative path."""
    files: dict[str, Path] = {}
    descriptors = root / DESCRIPTORS_REL
    if descriptors.is_file():
        files[DESCRIPTORS_REL.as_posix()] = descriptors
    package_root = root / PY_OUT_REL / PY_PACKAGE
    if package_root.is_dir():
        for path in package_root.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files[path.relative_to(root).as_posix()] = path
    return dict(sorted(files.items()))


def drift(fresh: Path, committed: Path) -> list[tuple[str, str]]:
    """Each file that differs between a fresh generation and gen/: (kind, path below gen/).

    The kind is "missing" (generated but not in gen/), "stale" (in gen/ but no longer
    generated) or "differs".
    """
    new, old = managed_files(fresh), managed_files(committed)
    problems = []
    for rel in sorted(new.keys() | old.keys()):
        if rel not in old:
            problems.append(("missing", rel))
        elif rel not in new:
            problems.append(("stale", rel))
        elif new[rel].read_bytes() != old[rel].read_bytes():
            problems.append(("differs", rel))
    return problems


def show_diff(fresh: Path, committed: Path, rel: str, limit: int = 40) -> Iterable[str]:
    """The first lines of a unified diff of one drifted text file, long lines shortened."""
    if rel.endswith(".binpb"):
        return []
    try:
        new = (fresh / rel).read_text(encoding="utf-8").splitlines()
        old = (committed / rel).read_text(encoding="utf-8").splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return []
    lines = difflib.unified_diff(old, new, f"committed/{rel}", f"fresh/{rel}", lineterm="")
    width = 160
    return [
        line if len(line) <= width else line[: width - 3] + "..."
        for _, line in zip(range(limit), lines, strict=False)
    ]


def install(fresh: Path) -> list[tuple[str, str]]:
    """Copy a fresh generation into gen/, removing stale files; return what changed."""
    changes = drift(fresh, GEN_DIR)
    new, old = managed_files(fresh), managed_files(GEN_DIR)
    for rel, path in old.items():
        if rel not in new:
            path.unlink()
    for rel, path in new.items():
        target = GEN_DIR / rel
        data = path.read_bytes()
        if not target.is_file() or target.read_bytes() != data:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    package_root = GEN_DIR / PY_OUT_REL / PY_PACKAGE
    for folder in sorted((p for p in package_root.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    return changes


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def cmd_generate() -> int:
    with tempfile.TemporaryDirectory(prefix="gen-protos-") as tmp:
        generate(Path(tmp))
        changes = install(Path(tmp))
    verbs = {"missing": "added", "stale": "removed", "differs": "updated"}
    for kind, rel in changes:
        print(f"{verbs[kind]}: gen/{rel}")
    print(f"gen/ is up to date ({len(managed_files(GEN_DIR))} files; {tool_versions()})")
    return 0


def cmd_check() -> int:
    with tempfile.TemporaryDirectory(prefix="gen-protos-") as tmp:
        fresh = Path(tmp)
        generate(fresh)
        problems = drift(fresh, GEN_DIR)
        if not problems:
            print("gen/ matches protos/")
            return 0
        print("gen/ does not match protos/; run: python scripts/gen_protos.py", file=sys.stderr)
        labels = {
            "missing": "missing",
            "stale": "stale (no longer generated)",
            "differs": "differs",
        }
        for kind, rel in problems:
            print(f"  {labels[kind]}: gen/{rel}", file=sys.stderr)
        for kind, rel in problems:
            if kind == "differs":
                for line in show_diff(fresh, GEN_DIR, rel):
                    print(f"    {line}", file=sys.stderr)
        print(f"generators here: {tool_versions()}", file=sys.stderr)
        return 1


def cmd_lint() -> int:
    prepare_deps()
    buf = venv_tool("buf")
    lint = run([buf, "lint"])
    fmt = run([buf, "format", "--diff", "--exit-code"])
    if lint == 0 and fmt == 0:
        print("buf lint and buf format: clean")
    return 0 if lint == 0 and fmt == 0 else 1


def cmd_breaking(ref: str) -> int:
    """buf breaking against a git ref.

    `buf breaking --against '.git#branch=main'` cannot work as such: the ref's buf.yaml names
    the git-ignored `.build/proto-deps` module, which the ref does not hold. So we export the
    ref's protos/ and buf.yaml, give the export the same deps, and compare against that folder.
    """
    prepare_deps()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref, "--", "buf.yaml", "protos"],
        cwd=REPO,
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise GenError(f"git archive {ref} failed: {archive.stderr.decode().strip()}")
    with tempfile.TemporaryDirectory(prefix="buf-against-") as tmp:
        against = Path(tmp)
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(against, filter="data")
        shutil.copytree(DEPS_DIR, against / DEPS_DIR.relative_to(REPO))
        code = run([venv_tool("buf"), "breaking", "--against", against])
    if code == 0:
        print(f"no breaking change against {ref}")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--check", action="store_true", help="exit 1 listing drifted files if gen/ is stale"
    )
    mode.add_argument(
        "--deps-only", action="store_true", help="only prepare .build/proto-deps for buf"
    )
    mode.add_argument(
        "--lint", action="store_true", help="run buf lint and buf format --diff --exit-code"
    )
    mode.add_argument(
        "--breaking", metavar="REF", help="run buf breaking against a git ref, e.g. main"
    )
    args = parser.parse_args(argv)
    try:
        if args.deps_only:
            print(f"prepared {prepare_deps().relative_to(REPO)}")
            return 0
        if args.check:
            return cmd_check()
        if args.lint:
            return cmd_lint()
        if args.breaking is not None:
            return cmd_breaking(args.breaking)
        return cmd_generate()
    except GenError as err:
        print(f"gen_protos: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
