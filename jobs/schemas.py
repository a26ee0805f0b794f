"""Typed parameter schemas of job kinds.

Each kind is a pydantic model. Field metadata (`json_schema_extra`) carries what the chat layer
needs: `aliases` (short keys users type: `lr`, `bs`, `ep`, `wd`), and `live` for fields a running
job may change. Validation is the only gate between chat text and a training process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field


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


class JobParams(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())

    @classmethod
    def field_aliases(cls) -> dict[str, str]:
        """Every accepted key (name or alias, lower-case) -> the field name."""
        out: dict[str, str] = {}
        for name, info in cls.model_fields.items():
            out[name] = name
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            for alias in extra.get("aliases", []):  # type: ignore[union-attr]
                out[str(alias).lower()] = name
        return out

    @classmethod
    def live_fields(cls) -> set[str]:
        return {
            name
            for name, info in cls.model_fields.items()
            if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("live")
        }


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
        "cpu", "ctx", "device", pattern=r"^(cpu|gpu(:\d{1,2})?)$", description="cpu, gpu or gpu:N",
        zh="设备：cpu、gpu 或 gpu:N",
    )  # fmt: skip
    seed: int = param(42, ge=0, le=2**31 - 1, description="random seed", zh="随机种子")
    report_seconds: float = param(
        1.0, "report", ge=0.1, le=3600, description="seconds between progress reports", zh="进度汇报间隔（秒）"
    )
    max_samples: int | None = param(
        None, "n", "samples", ge=1, description="use only the first N training samples", zh="只用前 N 个训练样本"
    )


@dataclass(frozen=True)
class JobKind:
    name: str
    params: type[JobParams]
    runner_module: str  # run as `python -m <module> --job-dir DIR`
    description: str = ""


class KindRegistry:
    """Job kinds by name; a deployment may register more (e.g. a PyTorch runner)."""

    def __init__(self) -> None:
        self._kinds: dict[str, JobKind] = {}
        self.default: str | None = None

    def register(self, kind: JobKind, *, default: bool = False) -> None:
        self._kinds[kind.name] = kind
        if default or self.default is None:
            self.default = kind.name

    def get(self, name: str | None) -> JobKind:
        key = name or self.default
        if key is None or key not in self._kinds:
            raise KeyError(name)
        return self._kinds[key]

    def names(self) -> list[str]:
        return sorted(self._kinds)

    def __contains__(self, name: object) -> bool:
        return name in self._kinds


def default_registry() -> KindRegistry:
    registry = KindRegistry()
    registry.register(
        JobKind("mxnet", MXNetParams, "jobs.runners.mxnet", MXNetParams.__doc__ or ""),
        default=True,
    )
    return registry


ParamsFactory = Callable[[dict[str, Any]], JobParams]
