"""Typed parameter schemas of job kinds.

Each kind is a pydantic model. Field metadata (`json_schema_extra`) carries what the chat layer
needs: `aliases` (short keys users type: `lr`, `bs`, `ep`, `wd`), and `live` for fields a running
job may change. Validation is the only gate between chat text and a training process.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from jobs.lang import Lang


def param(default: Any, *aliases: str, live: bool = False, zh: str = "", **kwargs: Any) -> Any:
    """A schema field with short aliases, optionally changeable while the job runs; `zh` is its
    description in Chinese, for people who drive training in Chinese."""
    extra = {"aliases": list(aliases), "live": live, "zh": zh}
    return Field(
        default,
        validation_alias=AliasChoices(*aliases) if aliases else None,
        json_schema_extra=extra,
        **kwargs,
    )


class Host(Protocol):
    """What a preflight may ask about the place the runner will run."""

    datasets_dir: str | None

    def gpu_count(self) -> int | None:
        """GPUs the runner's MXNet can use; None when it cannot be told."""
        ...


# field_aliases per parameter class; weak, as kinds described from a user's file build classes.
_ALIASES: weakref.WeakKeyDictionary[type, dict[str, str]] = weakref.WeakKeyDictionary()


class JobParams(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())

    @classmethod
    def field_aliases(cls) -> dict[str, str]:
        """Every accepted key (name or alias, lower-case) -> the field name (a fresh copy; built
        once per class, as every message that carries parameters asks)."""
        cached = _ALIASES.get(cls)
        if cached is None:
            cached = {}
            for name, info in cls.model_fields.items():
                cached[name] = name
                extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
                for alias in extra.get("aliases", []):  # type: ignore[union-attr]
                    cached[str(alias).lower()] = name
            _ALIASES[cls] = cached
        return dict(cached)

    def preflight(self, host: Host) -> list[str]:
        """What can be known to fail before the runner starts (a missing data folder, a GPU that
        is not there), one line each: `train` answers with these instead of "started"."""
        return []

    def summary(self, lang: Lang = Lang.EN) -> str:
        """A short line for chat (`job 3f2a started: <summary>`); kinds override it to pick fields."""
        shown = [f"{k}={v}" for k, v in self.model_dump(mode="json").items() if v is not None]
        return ", ".join(shown[:6]) + (", ..." if len(shown) > 6 else "")

    @classmethod
    def live_fields(cls) -> set[str]:
        return {
            name
            for name, info in cls.model_fields.items()
            if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("live")
        }


# `cpu`, `gpu`, `gpu:N`, or several: `gpu:0,1`, `cpu:0,cpu:1`, `gpu:0,gpu:2`.
CONTEXT_PATTERN = r"^(cpu|gpu)(:\d{1,2})?(,((cpu|gpu)(:\d{1,2})?|\d{1,2}))*$"


class Device(NamedTuple):
    """One device of a job's `context`: `gpu:1` is Device("gpu", 1)."""

    kind: str  # cpu | gpu
    index: int


@functools.lru_cache(maxsize=1024)
def parse_contexts(spec: str) -> tuple[Device, ...]:
    """`gpu:0,1` -> (Device("gpu", 0), Device("gpu", 1)); a bare number takes the device type
    before it. Parsed once per spec in a process (the validator parses it; the GPU queue, quotas,
    executors and runners read the same typed tuple); a spec that names a device twice is refused
    each time it is asked (ValueError)."""
    out: list[Device] = []
    device = "cpu"
    for token in spec.replace(" ", "").split(","):
        if token.isdigit():
            out.append(Device(device, int(token)))
            continue
        device, _, index = token.partition(":")
        out.append(Device(device, int(index or 0)))
    if len(set(out)) != len(out):
        raise ValueError(f"context {spec!r} names a device twice")
    return tuple(out)


class MXNetParams(JobParams):
    """Gluon image classifier on digits (bundled) or MNIST / Fashion-MNIST (local IDX files)."""

    model: Literal["mlp", "lenet"] = param("mlp", "net", "arch", description="network", zh="网络结构")
    dataset: Literal["digits", "mnist", "fashion_mnist"] = param(
        "digits", "data", "ds", description="data set (mnist/fashion_mnist read local IDX files)",
        zh="数据集（mnist / fashion_mnist 读取本地 IDX 文件）",
    )  # fmt: skip
    epochs: int = param(5, "ep", "ti", "epoch", ge=1, le=10_000, description="passes over the data", zh="训练轮数")
    batch_size: int = param(32, "bs", "batch", ge=1, le=65_536, description="samples per batch", zh="批大小")
    learning_rate: float = param(
        0.05, "lr", "learning-rate", live=True, gt=0, le=10, description="optimizer step size", zh="学习率"
    )
    weight_decay: float = param(0.0, "wd", ge=0, le=1, description="L2 penalty", zh="权重衰减（L2）")
    optimizer: Literal["sgd", "nag", "adam", "rmsprop", "adagrad"] = param(
        "nag", "opt", description="optimizer", zh="优化器"
    )
    momentum: float = param(0.9, "mom", ge=0, lt=1, description="momentum (sgd, nag)", zh="动量（sgd、nag）")
    context: str = param(
        "cpu", "ctx", "device", pattern=CONTEXT_PATTERN,
        description="cpu, gpu, gpu:N, or a list that splits each batch: gpu:0,1 or cpu:0,cpu:1",
        zh="设备：cpu、gpu、gpu:N，或多个设备（每个批次拆分到各设备）：gpu:0,1 或 cpu:0,cpu:1",
    )  # fmt: skip
    seed: int = param(42, ge=0, le=2**31 - 1, description="random seed", zh="随机种子")
    report_seconds: float = param(
        1.0, "report", ge=0.1, le=3600, description="seconds between progress reports", zh="进度汇报间隔（秒）"
    )
    max_samples: int | None = param(
        None, "n", "samples", ge=1, description="use only the first N training samples", zh="只用前 N 个训练样本"
    )
    patience: int | None = param(
        None, ge=1, le=10000, description="stop after this many epochs without improvement of `monitor`",
        zh="早停：monitor 连续这么多轮没有改进就停止",
    )  # fmt: skip
    min_delta: float = param(0.0, ge=0, description="the least change that counts as an improvement",
                             zh="算作改进的最小变化")  # fmt: skip
    monitor: Literal["val_loss", "val_acc", "train_loss", "train_acc"] = param(
        "val_loss", description="the metric early stopping watches", zh="早停观察的指标"
    )

    @field_validator("context")
    @classmethod
    def _devices_once(cls, value: str) -> str:
        parse_contexts(value)
        return value

    @property
    def devices(self) -> tuple[Device, ...]:
        """The `context` as typed devices (parsed when validated; this is that parse)."""
        return parse_contexts(self.context)

    def preflight(self, host: Host) -> list[str]:
        problems = []
        if self.dataset != "digits":
            from jobs.datasets import missing_idx

            missing = missing_idx(self.dataset, host.datasets_dir)
            if missing:
                problems.append(missing)
        wanted = [index for device, index in self.devices if device == "gpu"]
        if wanted:
            have = host.gpu_count()
            if have is not None and max(wanted) >= have:
                problems.append(
                    f"context={self.context}: the runner's MXNet sees {have} GPU(s)"
                    + (" (a CPU-only build, or no CUDA device here); use context=cpu" if have == 0 else "")
                )
        return problems

    def summary(self, lang: Lang = Lang.EN) -> str:
        zh = lang == Lang.ZH
        epochs = f"{self.epochs} 轮" if zh else f"{self.epochs} epoch" + ("" if self.epochs == 1 else "s")
        batch = f"批大小 {self.batch_size}" if zh else f"batch {self.batch_size}"
        lr = f"lr {self.learning_rate} ({self.optimizer})"
        return ", ".join([self.model, self.dataset, epochs, lr, batch, self.context])


@dataclass(frozen=True)
class JobKind:
    name: str
    params: type[JobParams]
    runner_module: str  # run as `python -m <module> --job-dir DIR`
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)  # for the runner, in params.json (module, command)
    source: str = "built-in"  # where it was found: built-in, config, entry point
    chat: bool = True  # offered in chat (train, sweep, params); False: started from the command line only


class KindUnavailable(KeyError):
    """A kind that is configured but could not be loaded; the message says why, in one line."""

    def __str__(self) -> str:
        return str(self.args[0])


class KindRegistry:
    """Job kinds by name: the built-in one, those named in config and those installed as plugins."""

    def __init__(self) -> None:
        self._kinds: dict[str, JobKind] = {}
        self.problems: dict[str, str] = {}  # kind name -> why it could not be loaded
        self.default: str | None = None

    def register(self, kind: JobKind, *, default: bool = False) -> None:
        self._kinds[kind.name] = kind
        self.problems.pop(kind.name, None)
        if default or self.default is None:
            self.default = kind.name

    def broken(self, name: str, problem: str) -> None:
        """Remember a kind that failed to load, so asking for it says why instead of 'unknown'."""
        self._kinds.pop(name, None)
        self.problems[name] = problem

    def get(self, name: str | None) -> JobKind:
        key = name or self.default
        if key in self.problems:
            raise KindUnavailable(f"job kind '{key}' is unavailable: {self.problems[key]}")
        if key is None or key not in self._kinds:
            raise KeyError(name)
        return self._kinds[key]

    def names(self) -> list[str]:
        """The kinds chat offers (`train <kind>`, `params`); `get` finds the others too."""
        return sorted(name for name, kind in self._kinds.items() if kind.chat)

    def __contains__(self, name: object) -> bool:
        return name in self._kinds


def default_registry() -> KindRegistry:
    registry = KindRegistry()
    registry.register(
        JobKind("mxnet", MXNetParams, "jobs.runners.mxnet", MXNetParams.__doc__ or ""),
        default=True,
    )
    return registry
