"""Configuration: a TOML file (`--config` / CHATOPS_CONFIG) overridden by CHATOPS_<SECTION>__<KEY>.

The core's sections are declared here; each platform's section (`[telegram]`, `[slack]`, a
third-party `[matrix]`) is declared by its adapter (`Adapter.settings_model`, next to its code) and
found through the adapter's `chatops.adapters` entry point, so a new platform needs no edit here.
Secrets are `SecretStr` so they never show up in a repr, a log line or an error message.
"""

from __future__ import annotations

import difflib
import getpass
import logging
import os
import tomllib
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

log = logging.getLogger(__name__)

ADAPTERS_GROUP = "chatops.adapters"


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "chatops"


BLANK_SECRET = "blank_secret"  # the error type of a blank secret (config_problems names its variable)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _no_blank_secret(cls, value: Any) -> Any:
        """A secret that is given but blank (`CHATOPS_TELEGRAM__TOKEN=""`, an unset variable in a
        compose file) is a mistake, never an open door: a check against it would pass an empty
        credential. One rule for every section's `SecretStr` fields, so no adapter can forget it."""
        if isinstance(value, SecretStr) and not value.get_secret_value().strip():
            raise PydanticCustomError(BLANK_SECRET, "must not be empty")
        return value

    @property
    def configured(self) -> bool:
        """Whether the platform has enough config to start (its adapter is enabled)."""
        return False


S = TypeVar("S", bound=BaseModel)  # a plugin section's model: an adapter's Section, an executor's


DEPRECATED_RAY = ("ray_address", "ray_runtime_env", "ray_num_cpus", "ray_channel", "ray_gcs_address", "ray_storage")


def _executor_names() -> set[str]:
    from jobs.executors import installed_executors

    return set(installed_executors())


def installed_platforms() -> dict[str, EntryPoint]:
    """The adapters installed in this environment, by platform name (not imported)."""
    return {ep.name: ep for ep in entry_points(group=ADAPTERS_GROUP)}


class AuthSettings(Section):
    """Identity patterns (globs) per role; nobody else may do anything."""

    admins: list[str] = Field(default_factory=list)
    operators: list[str] = Field(default_factory=list)
    viewers: list[str] = Field(default_factory=list)
    # The local console user is admin: whoever can type into the bot's terminal owns the box.
    console_admin: bool = True
    operators_control: Literal["own", "all"] = Field(
        "own", description="whose jobs an operator may pause, change and stop: their own, or anybody's (admins: all)"
    )
    rate_per_minute: int = Field(
        60,
        ge=0,
        description="messages one identity may send per minute, in bursts of as many; beyond: one"
        " 'slow down' answer, then silence until its allowance is full again (0: no limit)",
    )


class PersonSettings(Section):
    """`[people.alice] ids = ["telegram:7", "slack:U1"]`: one person on several platforms."""

    ids: list[str] = Field(min_length=1, description="the person's identities, exactly (no globs)")
    targets: list[str] = Field(
        default_factory=list, description="Apprise URLs told of the jobs this person starts (docs/notify.md)"
    )

    _targets = field_validator("targets")(lambda cls, v: _notify_targets(v))


class QuotaSettings(Section):
    """Fair use of a shared machine, per person (all their linked identities together); unset: no limit."""

    max_running_per_person: int | None = Field(None, ge=1, description="jobs of one person running at once; more wait")
    max_queued_per_person: int | None = Field(None, ge=0, description="jobs of one person waiting; more are refused")
    max_gpus_per_person: int | None = Field(None, ge=0, description="GPUs one person's running jobs hold; more wait")


class JobsSettings(Section):
    max_parallel: int = Field(1, ge=1, le=64)
    stop_timeout: float = Field(10.0, gt=0, description="seconds between a graceful stop and a kill")
    heartbeat_timeout: float = Field(60.0, gt=0, description="silence after which a job is lost")
    datasets_dir: Path | None = Field(None, description="folder with MNIST/Fashion-MNIST IDX files")
    python: str | None = Field(None, description="interpreter for runner processes")
    default_kind: str | None = Field(None, description="the kind `train` starts when none is named")
    gpus: list[int] | None = Field(
        None, description="the GPUs local jobs are given (unset: the ones nvidia-smi lists; [] turns it off)"
    )
    gpu_share: int = Field(1, ge=1, le=64, description="jobs one GPU may serve at a time")
    max_sweep_jobs: int = Field(32, ge=1, le=1000, description="the most jobs one `sweep` may start")
    executor: str = Field(
        "local",
        description="where runners run: an installed executor plugin by name (entry-point group"
        " chatops.executors): local processes, ray, slurm; its settings are its own section ([ray], [slurm])",
    )
    storage: Path | None = Field(
        None, description="folder of the job folders; with a cluster's executor every node must see it at this path"
    )
    # Deprecated for one release: the [ray] section holds these now (read there, with a warning).
    ray_address: str | None = Field(None, description="deprecated: [ray] address")
    ray_runtime_env: dict[str, Any] | None = Field(None, description="deprecated: [ray] runtime_env")
    ray_num_cpus: float | None = Field(None, ge=0, description="deprecated: [ray] num_cpus")
    ray_channel: Literal["shared", "cluster"] | None = Field(None, description="deprecated: [ray] channel")
    ray_gcs_address: str | None = Field(None, description="deprecated: [ray] gcs_address")
    ray_storage: str | None = Field(None, description="deprecated: [ray] storage")
    pass_env: list[str] = Field(
        default_factory=list,
        description='globs of the bot\'s environment every job gets on purpose, e.g. ["AWS_*", "HF_TOKEN"] (beyond'
        " a minimal allowlist; never a CHATOPS_* setting nor a value that is one of the bot's secrets)",
    )
    max_log_mb: float = Field(
        50.0, ge=0, le=1024 * 1024,
        description="the most a job's runner.log may hold, in MB: past it the runner keeps its first half and the"
        " latest output, with a line saying how much was dropped between (0: no cap)",
    )  # fmt: skip


def _notify_targets(urls: list[str]) -> list[str]:
    """Apprise URLs (send-only targets): each must look like one, and its chatops_* options be known
    values; the error names the target redacted, never its token. The adapter checks the rest."""
    from chatops.redact import notify_target_problem

    for url in urls:
        problem = notify_target_problem(url)
        if problem:
            raise ValueError(problem)
    return urls


class NotifySettings(Section):
    targets: list[str] = Field(
        default_factory=list, description="Apprise URLs told of every job (ntfy://, json://, pover://; docs/notify.md)"
    )
    chat_targets: int = Field(
        5, ge=0, le=100, description="how many targets of their own one person may add in chat with `notify add`"
        " (told of the jobs they start); 0: none, `notify add` is refused",
    )  # fmt: skip
    progress_seconds: float = Field(2.0, ge=0.2, description="minimum gap between live edits")
    digest_seconds: float = Field(60.0, ge=1, description="digest interval where edits are impossible")
    retry_max_seconds: float = Field(300.0, gt=0)
    poll_seconds: float = Field(
        0.25, gt=0, le=60, description="how soon a message queued by another process on the data dir is sent"
    )
    stall_minutes: float = Field(
        30.0,
        ge=0,
        description="a running job with no progress and no new output line for this long is announced"
        " as stalled, once, and again when it reports; 0 turns it off ([kinds.<name>] stall_minutes: per kind)",
    )

    _targets = field_validator("targets")(lambda cls, v: _notify_targets(v))
    _people_targets: bool = PrivateAttr(False)  # set by Settings: a person has targets of their own

    @property
    def configured(self) -> bool:
        """The send-only targets' adapter starts when any target is given (here or a person's), or
        people may add their own in chat (then any process that runs jobs delivers to them)."""
        return bool(self.targets) or self._people_targets or self.chat_targets > 0


class RetentionSettings(Section):
    """How long the bot keeps its own bookkeeping; a background task deletes what is older (at
    start, then every `prune_seconds`). Pending outbox messages are never deleted, however old."""

    dedupe_hours: float = Field(
        48.0,
        ge=24,
        description="how long a handled message id is remembered, so a redelivered one is not run twice; it must"
        " outlast every platform's redelivery (Telegram keeps undelivered updates for 24 h)",
    )
    audit_days: float = Field(90.0, gt=0, description="how long audit rows (who did what, every denial) are kept")
    delivered_hours: float = Field(
        24.0, ge=0, description="how long sent (or given-up) outbox messages are kept, with their spooled images"
    )
    # At least an hour: the final report's plot is drawn from the full events when the job ends.
    progress_hours: float = Field(
        24.0,
        ge=1,
        description="how long after a job ends its batch-level progress events are kept; then each epoch keeps"
        " its last one (epoch summaries, checkpoints and every other event stay)",
    )
    prune_seconds: float = Field(600.0, ge=1, le=86400, description="how often old rows are deleted")


class PluginsSettings(Section):
    modules: list[str] = Field(
        default_factory=list, description="modules with @command functions, beside the chatops.commands entry points"
    )


class HealthSettings(Section):
    listen: str | None = Field(None, description="host:port of GET /healthz (off when unset)")


class ConsoleSettings(Section):
    enabled: bool | None = None  # None: on when no other adapter is configured
    user: str = Field(default_factory=lambda: _safe_user())


def _safe_user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "local"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHATOPS_",
        env_nested_delimiter="__",
        # Platform sections arrive as extras and are validated by their adapter's model (below).
        extra="allow",
    )

    data_dir: Path = Field(default_factory=_default_data_dir)
    log_level: str = "INFO"
    auth: AuthSettings = Field(default_factory=AuthSettings)
    jobs: JobsSettings = Field(default_factory=JobsSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    plugins: PluginsSettings = Field(default_factory=PluginsSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    people: dict[str, PersonSettings] = Field(default_factory=dict)
    quotas: QuotaSettings = Field(default_factory=QuotaSettings)
    # [kinds.<name>]: checked one by one when the bot starts (jobs.kinds), so one bad kind never
    # stops the bot or the other kinds.
    kinds: dict[str, dict[str, Any]] = Field(default_factory=dict)
    config_file: Path | None = None  # set by load_settings: relative paths in [kinds] start beside it

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, PlatformEnv(settings_cls), dotenv_settings, file_secret_settings

    @model_validator(mode="after")
    def _executor_section(self) -> Settings:
        """`[jobs] executor` names an installed executor; its section (`[ray]`, `[slurm]`) is validated
        by the model its plugin declares; the old `[jobs] ray_*` keys still reach `[ray]`, each with a
        warning naming its new key."""
        from jobs.executors import installed_executors, load_executor

        extra = self.__pydantic_extra__ if self.__pydantic_extra__ is not None else {}
        old = {key: value for key in DEPRECATED_RAY if (value := getattr(self.jobs, key)) is not None}
        if old:
            section = extra.get("ray")
            moved = dict(section) if isinstance(section, dict) else {}
            if isinstance(section, BaseModel):
                moved = section.model_dump(exclude_unset=True)
            for key, value in old.items():
                new_key = key.removeprefix("ray_")
                log.warning("[jobs] %s is deprecated: use [ray] %s", key, new_key)
                moved.setdefault(new_key, value)
            extra["ray"] = moved
            self.jobs = self.jobs.model_copy(update=dict.fromkeys(old))  # moved: said once, read from [ray]
        found = installed_executors()
        if self.jobs.executor not in found:
            raise ValueError(f"[jobs] executor {self.jobs.executor!r} is not installed (installed: "
                             f"{', '.join(sorted(found)) or 'none'})")  # fmt: skip
        for name, value in extra.items():
            if name not in found or not isinstance(value, dict):
                continue
            try:
                model = load_executor(name).settings
            except ValueError:
                continue  # only the executor in use must load; `make_executor` says why it cannot
            if model is not None:
                extra[name] = _section_as(name, value, model)
        return self

    def executor_settings(self, name: str, model: type[BaseModel] | None) -> BaseModel | None:
        """The executor's own section as its model (its defaults when the config has none)."""
        return self.section(name, model) if model is not None else None

    @model_validator(mode="after")
    def _people_targets(self) -> Settings:
        self.notify._people_targets = any(p.targets for p in self.people.values())
        return self

    @model_validator(mode="after")
    def _platform_sections(self) -> Settings:
        """Validate each platform section with the model its installed adapter declares; a section
        whose adapter cannot be imported (its extra is missing) stays raw, for the app to explain."""
        extra = self.__pydantic_extra__
        if not extra or all(isinstance(v, Section) for v in extra.values()):
            return self
        found = installed_platforms()
        for name, value in extra.items():
            if isinstance(value, Section) or not isinstance(value, dict) or name not in found:
                continue
            try:
                model = getattr(found[name].load(), "settings_model", None)
            except ImportError:
                continue
            if model is not None:
                extra[name] = _section_as(name, value, model)
        return self

    def platforms(self) -> dict[str, Section | dict[str, Any]]:
        """The platform sections given (beyond the console): validated, or raw where the adapter
        could not be imported."""
        executors = _executor_names()
        return {k: v for k, v in (self.__pydantic_extra__ or {}).items()
                if isinstance(v, Section | dict) and k not in executors}  # fmt: skip

    def section(self, name: str, model: type[S]) -> S:
        """A platform's or an executor's section as its model (its defaults when the config has none)."""
        value = (self.__pydantic_extra__ or {}).get(name)
        return value if isinstance(value, model) else model.model_validate(value or {})

    @property
    def config_dir(self) -> Path:
        return self.config_file.resolve().parent if self.config_file else Path.cwd()

    @property
    def db_path(self) -> Path:
        return self.data_dir / "chatops.db"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"


LOCAL_CONFIG = "chatops.toml"  # read from the current folder when no config is named


def user_config() -> Path:
    """The user's own config file, read when neither a config is named nor `./chatops.toml` exists."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "chatops" / LOCAL_CONFIG


def find_config(config: Path | str | None = None) -> Path | None:
    """The config file in use: `--config`, else CHATOPS_CONFIG, else `./chatops.toml`, else the
    user's (`~/.config/chatops/chatops.toml`); None: defaults and the environment only. A named
    file must exist; the others are read only where present."""
    named = config or os.environ.get("CHATOPS_CONFIG")
    if named:
        if not Path(named).is_file():
            raise FileNotFoundError(f"config file not found: {named}")
        return Path(named)
    for candidate in (Path(LOCAL_CONFIG), user_config()):
        if candidate.is_file():
            return candidate
    return None


def load_settings(config: Path | str | None = None, data_dir: Path | str | None = None) -> Settings:
    """Read settings: init arguments > environment > TOML file (`find_config`) > defaults."""
    path = find_config(config)

    class _FromFile(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, PlatformEnv(settings_cls)]
            if path is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(path)))
            return tuple(sources)

    kwargs: dict[str, Any] = {"data_dir": Path(data_dir)} if data_dir is not None else {}
    if path is not None:
        kwargs["config_file"] = Path(path)
        for problem in unknown_keys(Path(path)):
            log.warning("config %s: %s", path, problem)
    loaded = _FromFile(**kwargs)
    return Settings.model_validate(loaded.model_dump())


class PlatformEnv(PydanticBaseSettingsSource):
    """CHATOPS_<PLATFORM>__<KEY> for the platform sections, which are not fields of Settings (the
    environment source reads only fields); an unknown platform name is warned about."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        core = set(Settings.model_fields)
        for key, value in os.environ.items():
            if not key.upper().startswith("CHATOPS_") or "__" not in key:
                continue
            path = key[len("CHATOPS_") :].lower().split("__")
            if path[0] in core or not all(path):
                continue
            node = found
            for part in path[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    break
            else:
                node[path[-1]] = value
        if found:
            known = {**installed_platforms(), **dict.fromkeys(_executor_names())}
            for name in sorted(set(found) - set(known)):
                log.warning("environment: %s", _unknown(f"section CHATOPS_{name.upper()}__… is ignored", name,
                                                         [*core, *known]))  # fmt: skip
                del found[name]
        return found


def unknown_keys(path: Path) -> list[str]:
    """Sections and keys of a config file that no setting reads, each with the closest known
    name: a misspelled `[telgram]` would otherwise be dropped without a word."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []  # reading the settings reports it
    problems = []
    fields = Settings.model_fields
    platforms = {**installed_platforms(), **dict.fromkeys(_executor_names())}
    for key, value in data.items():
        if key in platforms and key not in fields:
            continue  # its adapter's (or executor's) model forbids unknown keys when it is validated
        if key not in fields:
            what = f"section [{key}]" if isinstance(value, dict) else f"key {key!r}"
            problems.append(_unknown(f"{what} is ignored", key, [*fields, *platforms]))
            continue
        model = fields[key].annotation
        if isinstance(value, dict) and isinstance(model, type) and issubclass(model, BaseModel):
            if model.model_config.get("extra") == "forbid":
                continue  # validation refuses its unknown keys, in the same words (`config_problems`)
            problems += [_unknown(f"key {k!r} in [{key}]", k, model.model_fields) for k in value
                         if k not in model.model_fields]  # fmt: skip
    return problems


def config_problems(
    exc: ValidationError, model: type[BaseModel] | None = None, prefix: str = "", env: str = ""
) -> list[str]:
    """One line per problem, naming the key and never quoting a value (it may be a token); a blank
    secret also names its environment variable (`env` is the section's prefix), where an empty
    one most often comes from."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        if err.get("type") == "extra_forbidden" and model is not None and len(err["loc"]) == 1:
            lines.append(prefix + _unknown(f"key {loc!r}", loc, model.model_fields))
            continue
        section = _section_model(err["loc"][0]) if len(err["loc"]) == 2 and model is None else None
        if err.get("type") == "extra_forbidden" and section is not None:
            key = str(err["loc"][1])
            lines.append(prefix + _unknown(f"key {key!r} in [{err['loc'][0]}]", key, section.model_fields))
            continue
        msg = str(err.get("msg", "is invalid")).removeprefix("Value error, ")
        if env and err.get("type") == BLANK_SECRET:
            msg += f" ({env}{'__'.join(str(p) for p in err['loc']).upper()})"
        lines.append(f"{prefix}{loc}: {msg}" if loc else prefix + msg)
    return lines


def _section_as(name: str, value: dict[str, Any], model: type[S]) -> S:
    """A plugin's section (`[telegram]`, `[slurm]`) validated by its model; one line per problem."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        problems = config_problems(exc, model, prefix=f"[{name}] ", env=f"CHATOPS_{name.upper()}__")
        raise ValueError("; ".join(problems)) from None


def _section_model(name: object) -> type[BaseModel] | None:
    field = Settings.model_fields.get(str(name))
    model = field.annotation if field is not None else None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unknown(what: str, name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"unknown {what}" + (f"; did you mean {close[0]!r}?" if close else "")
