"""compose.yaml and the Dockerfile, checked without docker: every `CHATOPS_*` variable they set is
a setting chatops reads, the Ray nodes run the Ray version pyproject pins, and the Ray variant is
built through the Dockerfile's EXTRAS argument."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from chatops.settings import Settings, config_problems, installed_platforms, load_settings

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: compose.yaml cannot be read without it")

ROOT = Path(__file__).resolve().parents[1]
_VAR = re.compile(r"\$\{(\w+)(:?[-+?])?([^}]*)\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}` in every string (the others fail)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, op, default = match.groups()
        if op is None:
            return env.get(name, "")
        assert op in (":-", "-"), f"this test reads ${{VAR:-default}} only, not {match.group(0)}"
        given = env.get(name)
        return given if given or (op == "-" and given is not None) else default

    return _VAR.sub(one, value.replace("$$", "\0")).replace("\0", "$")


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """compose.yaml as docker compose reads it with `env` as the shell's environment."""
    return interpolate(yaml.safe_load((ROOT / "compose.yaml").read_text()), env or {})


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's environment (map or list form); None: passed through from the shell if set."""
    given = service.get("environment") or {}
    if isinstance(given, list):
        given = dict(item.split("=", 1) if "=" in item else (item, None) for item in given)
    return {str(k): None if v is None else str(v) for k, v in given.items()}


def dockerfile_env() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("ENV "):
            found.update(pair.split("=", 1) for pair in line[4:].split())
    return found


def container_files(spec: dict[str, Any] | None) -> dict[str, Path]:
    """Container folders and files -> where they come from in the repository: the Dockerfile's
    `COPY` lines, then (when `spec` is compose's) the bot's bind mounts, which hide what the image has."""
    found: dict[str, Path] = {}
    workdir = "/"
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("WORKDIR "):
            workdir = line.split()[1]
        elif line.startswith("COPY ") and "--from" not in line:
            *sources, target = line.split()[1:]
            target = target if target.startswith("/") else f"{workdir.rstrip('/')}/{target.removeprefix('./')}"
            for source in sources:
                found[target.rstrip("/") if len(sources) == 1 else f"{target.rstrip('/')}/{source}"] = ROOT / source
    for volume in (spec or {}).get("services", {}).get("bot", {}).get("volumes") or []:
        source, target, *_ = str(volume).split(":")
        if source.startswith((".", "/")):
            found[target.rstrip("/")] = (ROOT / source).resolve()
    return found


def seen_in_container(path: str, spec: dict[str, Any] | None) -> Path | None:
    """The repository file a container path shows (the longest mount or copy above it wins)."""
    files = container_files(spec)
    for prefix in sorted(files, key=len, reverse=True):
        if path == prefix or path.startswith(prefix + "/"):
            return files[prefix] / path[len(prefix) :].lstrip("/")
    return None


def ours(service: dict[str, Any]) -> bool:
    """Built from this repository's Dockerfile."""
    build = service.get("build")
    context = build.get("context") if isinstance(build, dict) else build
    return context in (".", "./")


def ray_nodes(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    def runs_ray(s: dict[str, Any]) -> bool:
        argv = [*(s.get("entrypoint") or []), *(s.get("command") or [])]
        return bool(argv) and argv[0] == "ray"

    return {name: s for name, s in spec["services"].items() if runs_ray(s)}


def landed(settings: Settings, path: list[str]) -> bool:
    """Whether CHATOPS_<path joined by __> is a field chatops reads (a core or a platform setting)."""
    if path[0] not in Settings.model_fields:
        if path[0] not in installed_platforms() or len(path) != 2:
            return False
        section = settings.platforms().get(path[0])
        return isinstance(section, BaseModel) and path[1] in type(section).model_fields
    node: Any = settings
    for part in path:
        if not isinstance(node, BaseModel) or part not in type(node).model_fields:
            return False
        node = getattr(node, part)
    return True


def test_every_chatops_variable_is_a_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = compose()
    variables: dict[str, tuple[str, str | None]] = {}  # name -> (where, value)
    for name, value in dockerfile_env().items():
        variables[name] = ("Dockerfile", value)
    for service, body in spec["services"].items():
        for name, value in environment(body).items():
            if name.startswith("CHATOPS_"):
                variables[name] = (f"service {service}", value)
    assert variables, "compose.yaml sets no CHATOPS_ variable"
    # A `${VAR:-}` default sets the key to "" (a Telegram token "" counts as configured): a
    # variable that may be absent is passed through (no value), so it stays unset.
    empty = [f"{name} ({where})" for name, (where, value) in variables.items() if value == ""]
    assert not empty, f"set to an empty string when the shell has none: {empty}"

    for name in [k for k in os.environ if k.startswith("CHATOPS_")]:
        monkeypatch.delenv(name)
    config = variables.pop("CHATOPS_CONFIG", None)
    if config is not None:  # not a setting: the file load_settings reads; compose mounts it from here
        where, target = config
        source = seen_in_container(str(target), spec)
        assert source is not None and source.is_file(), f"CHATOPS_CONFIG={target} ({where}) is no file the bot sees"
        monkeypatch.setenv("CHATOPS_CONFIG", str(source))
    variables.pop("CHATOPS_DATA_DIR", None)
    for name, (_, value) in variables.items():
        monkeypatch.setenv(name, "placeholder" if value is None else value)

    caplog.set_level(logging.WARNING, logger="chatops.settings")
    try:
        settings = load_settings(data_dir=tmp_path / "data") if config else Settings(data_dir=tmp_path / "data")
    except ValidationError as exc:
        pytest.fail("compose's variables are refused: " + "; ".join(config_problems(exc, Settings)))
    unknown = [r.getMessage() for r in caplog.records if "unknown" in r.getMessage()]
    assert not unknown, unknown
    not_read = [
        f"{name} ({where})" for name, (where, _) in variables.items()
        if not landed(settings, name.removeprefix("CHATOPS_").lower().split("__"))
    ]  # fmt: skip
    assert not not_read, f"not settings chatops reads: {not_read}"
    assert settings.data_dir == tmp_path / "data"


def test_the_ray_nodes_run_the_pinned_ray() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [pin] = [r for r in pyproject["project"]["optional-dependencies"]["ray"] if r.startswith("ray")]
    version = pin.split("==")[1]
    dockerfile = (ROOT / "Dockerfile").read_text()
    nodes = ray_nodes(compose())
    for name, node in nodes.items():
        if ours(node):
            extras = node["build"].get("args", {}).get("EXTRAS", "")
            # pip install ".[ray]" installs pyproject's pin: the bot's client and the nodes agree.
            assert "ray" in extras.split(","), f"{name} is built without the ray extra (EXTRAS={extras!r})"
            assert re.search(r'pip install [^\n]*"\.\[\$\{EXTRAS\}\]"', dockerfile), "the Dockerfile ignores EXTRAS"
        else:
            image = str(node.get("image", ""))
            assert re.fullmatch(rf"rayproject/ray:{re.escape(version)}(-py311)?(-cpu|-gpu|-cu\d+)?", image), (
                f"{name} runs {image!r}, not Ray {version} as pyproject pins ({pin})"
            )  # fmt: skip


def test_the_ray_variant_is_built_through_extras() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG EXTRAS=", dockerfile, re.M), "the Dockerfile has no EXTRAS build argument"
    spec = compose()
    nodes = ray_nodes(spec)
    assert nodes, "compose.yaml has no Ray head or worker"
    assert all(ours(n) and "EXTRAS" in n["build"].get("args", {}) for n in nodes.values())
    # Services built with different arguments must not share a tag (the last build would win).
    built: dict[str, str] = {}
    for name, service in spec["services"].items():
        if ours(service):
            args = repr(sorted((service["build"].get("args") or {}).items()))
            tag = service.get("image", name)
            assert built.setdefault(tag, args) == args, f"{tag} is built with two sets of arguments"
    # The bot takes the cluster's client through the same argument when asked for the Ray variant.
    bot = compose({"CHATOPS_EXTRAS": "telegram,ray"})["services"]["bot"]
    assert "ray" in bot["build"]["args"]["EXTRAS"].split(",")
    # The shared-folder channel: the bot's job folders are on a volume every node mounts there.
    storage = environment(spec["services"]["bot"]).get("CHATOPS_JOBS__STORAGE")
    if storage and environment(spec["services"]["bot"]).get("CHATOPS_JOBS__RAY_CHANNEL", "shared") == "shared":
        bot_mount = next(v for v in spec["services"]["bot"]["volumes"] if storage.startswith(v.split(":")[1] + "/"))
        for name, node in nodes.items():
            assert bot_mount in (node.get("volumes") or []), f"{name} does not mount {bot_mount} ({storage})"


def test_named_volumes_are_writable_by_the_image_user() -> None:
    """A new named volume takes the owner of the image's folder it is mounted on: the folder must
    exist in the image and belong to the user the image runs as, or the volume is root's."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    chowned = {p for line in re.findall(r"chown chatops ([^&\n]+)", dockerfile) for p in line.split()}
    spec = compose()
    named = set(spec.get("volumes") or {})
    for name, service in spec["services"].items():
        if not ours(service):
            continue
        for volume in service.get("volumes") or []:
            source, target, *mode = str(volume).split(":")
            if source in named and "ro" not in mode:
                assert target in chowned, f"{name}: volume {source} at {target}, which the image does not give chatops"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["docker run", "compose"])
def test_the_container_trains(how: str, tmp_path: Path) -> None:
    """Exactly the config folder the container sees, copied alone to a folder of its own (so no
    file of the checkout can stand in for one the image lacks): `chatops check` passes on it and a
    bare `train` trains."""
    spec = compose() if how == "compose" else None
    env = environment(spec["services"]["bot"]) if spec else {}
    config = env.get("CHATOPS_CONFIG") or dockerfile_env().get("CHATOPS_CONFIG")
    assert config, "the container names no config file"
    source = seen_in_container(config, spec)
    assert source is not None and source.is_file(), f"{config} is not in the container ({how})"
    folder = tmp_path / "etc-chatops"
    folder.mkdir()
    where = config.rsplit("/", 1)[0]
    for path in source.parent.iterdir():  # what the container shows beside the config file, and only that
        if seen_in_container(f"{where}/{path.name}", spec) == path:
            (shutil.copytree if path.is_dir() else shutil.copy)(path, folder / path.name)
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("CHATOPS_")}
    argv = [sys.executable, "-m", "chatops.cli", "--config", str(folder / source.name), "--data-dir",
            str(tmp_path / "data")]  # fmt: skip
    check = subprocess.run([*argv, "check"], capture_output=True, text=True, cwd=tmp_path, env=run_env, timeout=120)
    assert check.returncode == 0 and "config ok" in check.stdout, check.stdout + check.stderr
    if how == "compose":  # one real run is enough: both ways see the same folder
        return
    train = subprocess.run([*argv, "send", "train epochs=1", "--wait"], capture_output=True, text=True, cwd=tmp_path,
                           env=run_env, timeout=240)  # fmt: skip
    assert train.returncode == 0, train.stdout + train.stderr
    assert "succeeded" in train.stdout, train.stdout
