"""docker/Dockerfile installs exactly setup.cfg's dependencies, pinned, with torch 2.10 and xformers 0.0.35.

Docker cannot run in CI, so the Dockerfile is parsed as text: every `pip install` in a RUN instruction
contributes its requirement arguments; `-e .` / `.` (the repo itself) and option values are skipped.
"""

import configparser
import re
import shlex
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
SETUP_CFG = ROOT / "setup.cfg"

# Packages the image may install beyond setup.cfg, each with the reason. Keep this short.
BUILD_TOOLS = {
    "ninja": "DeepSpeed JIT-compiles its ops at first use (DS_BUILD_OPS=0); pinned so those builds are reproducible",
}

# pip options that take a value as the next token; the value is not a requirement.
_VALUE_OPTIONS = {
    "-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-c", "--constraint", "-r", "--requirement",
    "-e", "--editable", "-t", "--target", "--prefix", "--root", "--src", "--platform", "--python-version",
    "--implementation", "--abi", "--upgrade-strategy", "--progress-bar", "--trusted-host", "--cache-dir",
}


def run_commands(dockerfile_text: str) -> list[str]:
    """The shell command of every RUN instruction, continuations joined and comment lines dropped."""
    lines = [ln for ln in dockerfile_text.splitlines() if not ln.strip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))  # Docker's default escape character is the backslash
    return [m.group(1) for m in re.finditer(r"^\s*RUN\s+(.*)$", joined, flags=re.MULTILINE | re.IGNORECASE)]


def _pip_install_args(tokens: list[str]) -> list[str]:
    """The arguments after `install` if `tokens` is `[VAR=x ...] pip install ...` or `python -m pip install ...`."""
    while tokens and re.fullmatch(r"\w+=\S*", tokens[0]):
        tokens = tokens[1:]  # environment assignments before the command
    if len(tokens) >= 2 and re.fullmatch(r"pip(3[.\d]*)?", Path(tokens[0]).name) and tokens[1] == "install":
        return tokens[2:]
    if tokens[1:4] == ["-m", "pip", "install"] and re.fullmatch(r"python(3[.\d]*)?", Path(tokens[0]).name):
        return tokens[4:]
    return []


def pip_requirements(dockerfile_text: str) -> list[Requirement]:
    """Every requirement named on a `pip install` command line (not the repo itself, not option values)."""
    reqs = []
    for command in run_commands(dockerfile_text):
        for part in re.split(r"&&|\|\||;", command):
            args = _pip_install_args(shlex.split(part))
            skip_next = False
            for tok in args:
                if skip_next:
                    skip_next = False
                elif tok in _VALUE_OPTIONS:
                    skip_next = True
                elif tok.startswith("-") or tok.startswith(".") or tok.startswith("/"):
                    continue  # flags (--no-deps, -U, --opt=value) and local paths (the repo)
                else:
                    reqs.append(Requirement(tok))
    return reqs


def setup_cfg_requirements(setup_cfg_text: str) -> list[Requirement]:
    """setup.cfg's [options] install_requires plus the `xformers` extra."""
    cfg = configparser.ConfigParser()
    cfg.read_string(setup_cfg_text)
    lines = cfg["options"]["install_requires"].splitlines() + cfg["options.extras_require"]["xformers"].splitlines()
    return [Requirement(ln.strip()) for ln in lines if ln.strip()]


def dependency_diff(dockerfile_text: str, setup_cfg_text: str) -> tuple[set[str], set[str]]:
    """(in setup.cfg but not installed by the Dockerfile, installed by the Dockerfile but not in setup.cfg)."""
    docker = {canonicalize_name(r.name) for r in pip_requirements(dockerfile_text)}
    wanted = {canonicalize_name(r.name) for r in setup_cfg_requirements(setup_cfg_text)}
    return wanted - docker, docker - wanted - set(BUILD_TOOLS)


@pytest.fixture(scope="module")
def dockerfile_text() -> str:
    return DOCKERFILE.read_text()


@pytest.fixture(scope="module")
def setup_cfg_text() -> str:
    return SETUP_CFG.read_text()


@pytest.fixture(scope="module")
def pins(dockerfile_text) -> dict[str, Requirement]:
    reqs = pip_requirements(dockerfile_text)
    names = [canonicalize_name(r.name) for r in reqs]
    assert len(names) == len(set(names)), f"a package is installed twice: {sorted(names)}"
    return dict(zip(names, reqs, strict=True))


def test_dockerfile_installs_exactly_setup_cfg_dependencies(dockerfile_text, setup_cfg_text):
    missing, extra = dependency_diff(dockerfile_text, setup_cfg_text)
    assert not missing, f"in setup.cfg but not installed by docker/Dockerfile: {sorted(missing)}"
    assert not extra, f"installed by docker/Dockerfile but not in setup.cfg (nor BUILD_TOOLS): {sorted(extra)}"


def test_every_package_is_pinned_to_one_version(pins):
    unpinned = {name: str(r.specifier) for name, r in pins.items()
                if len(r.specifier) != 1 or next(iter(r.specifier)).operator != "=="}
    assert not unpinned, f"pin these with ==X.Y.Z: {unpinned}"


def test_pins_satisfy_setup_cfg_ranges(pins, setup_cfg_text):
    for req in setup_cfg_requirements(setup_cfg_text):
        pinned = next(iter(pins[canonicalize_name(req.name)].specifier)).version
        assert req.specifier.contains(pinned, prereleases=True), f"{req.name}=={pinned} violates setup.cfg's {req}"


def test_torch_and_xformers_versions(pins):
    def version(name: str) -> str:
        return next(iter(pins[name].specifier)).version

    assert version("torch").startswith("2.10."), "the image is built for torch 2.10 + CUDA 12.8"
    assert version("xformers") == "0.0.35", "xformers 0.0.35 is the build for torch 2.10"
    assert version("torchvision").startswith("0.25."), "torchvision 0.25 is the release paired with torch 2.10"


def test_image_layout(dockerfile_text):
    assert re.search(r"^FROM\s+\S*(cuda12\.8|pytorch:2\.10)", dockerfile_text, flags=re.MULTILINE), "CUDA 12.8 base"
    assert re.search(r"\bDS_BUILD_OPS=0\b", dockerfile_text), "DeepSpeed ops must be JIT-built, not at install"
    assert re.search(r"^WORKDIR\s", dockerfile_text, flags=re.MULTILINE)
    deps_at = dockerfile_text.index("torch==")
    copy_at = re.search(r"^COPY\s+\.\s", dockerfile_text, flags=re.MULTILINE).start()
    assert deps_at < copy_at, "install dependencies before copying the source, so code edits reuse the cached layer"
    self_install = [c for c in run_commands(dockerfile_text) if re.search(r"pip install .*(-e )?\.\s*$", c)]
    assert self_install and all("--no-deps" in c for c in self_install), "install the repo itself with --no-deps"


def test_dockerignore_keeps_context_small():
    entries = {ln.strip().strip("/") for ln in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", "work_dirs"} <= entries and any("__pycache__" in e for e in entries)


# The checks above must be able to fail; exercise them on edited copies of the real files.


def test_detects_dependency_added_to_setup_cfg_only(dockerfile_text, setup_cfg_text):
    edited = setup_cfg_text.replace("    tqdm\n", "    tqdm\n    Einops>=0.8\n", 1)
    assert edited != setup_cfg_text
    assert dependency_diff(dockerfile_text, edited) == ({"einops"}, set())


def test_detects_package_installed_only_by_dockerfile(dockerfile_text, setup_cfg_text):
    edited = dockerfile_text.replace("        tqdm==", "        Pillow_SIMD==9.0.0 \\\n        tqdm==", 1)
    assert edited != dockerfile_text
    assert dependency_diff(edited, setup_cfg_text) == (set(), {"pillow-simd"})


def test_parser_normalises_names_and_skips_options():
    text = (
        "FROM x\n"
        "RUN apt-get update && python -m pip install --no-cache-dir -i https://idx \\\n"
        "    # a comment inside the continuation\n"
        "    Open_Clip.Torch[extra]==3.3.0 'numpy>=2' \\\n"
        "    && pip3 install --no-deps -e . && echo pip install is-not-here\n"
    )
    names = {canonicalize_name(r.name) for r in pip_requirements(text)}
    assert names == {"open-clip-torch", "numpy"}
