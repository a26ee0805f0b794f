"""What a job's process sees of the bot's environment: a minimal one, never a setting or a secret.

The job boundary is a trust boundary (docs/security.md): an operator chooses parameters, not code,
yet a script that prints its environment would show whatever it was given. So every executor
builds a runner's environment here, and the command wrapper again for its script:

- from the parent only the names in `ALLOWED` (the interpreter, locale, devices, math libraries;
  MXNet needs `OPENBLAS_CORETYPE` on some machines), plus what the config passes on purpose:
  `[jobs] pass_env` and a kind's `pass_env` (globs over the parent's names);
- then the kind's literal `env` (the admin's own word, taken as written) and the launch's own
  variables (`CUDA_VISIBLE_DEVICES`);
- never, whatever the globs say (`["*"]` too), a parent variable named `CHATOPS_*` (every setting
  of the bot: tokens, the config path, the data dir), nor one whose value is, or holds, one of the
  bot's secrets (a token exported under another name). A literal `env` may not name `CHATOPS_*`
  either (`jobs.kinds` refuses it as a config error; here it is dropped).

The runner protocol's own variables (`CHATOPS_JOB_DIR`, `CHATOPS_EVENTS`, `CHATOPS_PARAMS_FILE`)
are set by the runner for its script, after this.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

from jobs.protocol import PARAMS_FILE

ALLOWED = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR",
    "VIRTUAL_ENV", "CONDA_PREFIX", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONUNBUFFERED",
    "CUDA_*", "NVIDIA_*", "NCCL_*", "MXNET_*", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_*",
)  # fmt: skip
RESERVED = "CHATOPS_"  # the bot's settings: never into a job
HELD_IN = 8  # a secret at least this long is refused inside a longer value too (a URL with a token)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def reserved(name: str) -> bool:
    """A name of the bot's own (any case: pydantic-settings reads `chatops_x` as a setting too)."""
    return name.upper().startswith(RESERVED)


def bad_name(name: str) -> str | None:
    """Why `name` cannot be a job's environment variable, or None."""
    if reserved(name):
        return f"{name}: names starting with {RESERVED} are the bot's own settings and never reach a job"
    if not _NAME.match(name):
        return f"{name!r}: an environment variable name is letters, digits and _ (not starting with a digit)"
    return None


def _matcher(patterns: Iterable[str]) -> re.Pattern[str]:
    return re.compile("|".join(fnmatch.translate(p) for p in patterns) or r"(?!)")


_ALLOWED = _matcher(ALLOWED)


def _holds_secret(value: str, secrets: Collection[str]) -> bool:
    return any(value == s or (len(s) >= HELD_IN and s in value) for s in secrets)


def job_environment(
    parent: Mapping[str, str],
    *,
    pass_env: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    secrets: Collection[str] = (),
    allowlist: bool = True,
) -> dict[str, str]:
    """A job's environment from `parent` (the allowlist, unless `allowlist` is False, and the
    `pass_env` globs), then `env` as given; `CHATOPS_*` never, nor a parent value holding a secret."""
    globs = list(pass_env)
    wanted = _matcher(globs) if globs else None
    out = {
        name: value
        for name, value in parent.items()
        if not reserved(name)
        and ((allowlist and _ALLOWED.fullmatch(name)) or (wanted is not None and wanted.fullmatch(name)))
        and not _holds_secret(value, secrets)
    }
    out.update({name: str(value) for name, value in (env or {}).items() if not reserved(name)})
    return out


def kind_environment(job_dir: Path) -> tuple[dict[str, str], list[str]]:
    """The job kind's literal `env` and its `pass_env` globs, as the manager wrote them into the
    job's `params.json` options (absent or unreadable: none)."""
    try:
        options = json.loads((job_dir / PARAMS_FILE).read_text(encoding="utf-8")).get("options") or {}
    except (OSError, ValueError, AttributeError):
        return {}, []
    env, globs = options.get("env"), options.get("pass_env")
    literal = {str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {}
    return literal, [str(g) for g in globs] if isinstance(globs, list) else []
