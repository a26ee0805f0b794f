"""Command plugins: a team's own `gpus` or `deploy` without editing chatops.

    from chatops import command

    @command("gpus", role="viewer", aliases=["显卡"])
    async def gpus(ctx, index: int | None = None, verbose: bool = False) -> str:
        \"\"\"GPU use on the training host.\"\"\"
        ...

The parameters after the context, each with a type hint and a default, are the command's
arguments (`key=value`, or bare words in order): the router parses, validates and explains them
as it does for the built-in commands. A parameter without a default whose type is a service is a
dependency, given by the bot: `JobManager` (jobs), `ChatStore`, `Conversation`, `Identity` (the
sender), `Incoming`, `Role` (the sender's) and `Lang` ("en" or "zh"), as FastAPI injects them.
The docstring's first line is the summary in `help` and in
the platforms' command menus. Modules with such functions are found through the entry-point
group `chatops.commands` and the config key `[plugins] modules`; one that fails to load is
reported in one line and the bot runs on without it.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import types
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import replace
from importlib.metadata import entry_points
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, create_model

from chatops.auth import Role
from chatops.message import Conversation, Identity, Incoming, Reply
from chatops.specs import CommandContext, CommandRegistry, CommandSpec, HandlerResult, Lang, Question
from chatops.store import ChatStore
from jobs.manager import JobManager

log = logging.getLogger(__name__)

COMMAND_GROUP = "chatops.commands"
_SPEC = "__chatops_command__"
F = TypeVar("F", bound=Callable[..., Awaitable[HandlerResult]])

# What a handler may declare, by type, and where each comes from.
DEPENDENCIES: dict[Any, Callable[[CommandContext[Any]], Any]] = {
    JobManager: lambda ctx: ctx.jobs,
    ChatStore: lambda ctx: ctx.chats,
    Conversation: lambda ctx: ctx.conversation,
    Identity: lambda ctx: ctx.sender,
    Incoming: lambda ctx: ctx.incoming,
    Role: lambda ctx: ctx.role,
    Lang: lambda ctx: ctx.lang,
}
_BY_NAME = {getattr(t, "__name__", ""): t for t in DEPENDENCIES}


def command(
    name: str,
    *,
    role: Literal["viewer", "operator", "admin", "none"] = "viewer",
    aliases: Iterable[str] = (),
    examples: Iterable[str] = (),
    args: type[BaseModel] | None = None,
    positionals: Iterable[str] | None = None,
    summary: str | None = None,
    summary_zh: str = "",
    confirm: Callable[[CommandContext[Any]], str | Question] | None = None,
    job_params: bool = False,
    raw: bool = False,
    redact: Callable[[str], str] | None = None,
) -> Callable[[F], F]:
    """Make an `async def handler(ctx, arg: type = default, …)` a chat command (see the module).

    The rest is for commands that need more (the built-in ones are declared this way too): `args`,
    a pydantic model of the arguments instead of parameters (`positionals`: the fields bare words
    fill, in order); `summary`/`summary_zh` instead of the docstring; `confirm`, the question asked
    before it runs; `job_params`, keys beyond `args` kept for a job kind's schema; `raw`, the
    handler parses what follows the command word itself (`ctx.rest`); `redact`, what the audit keeps
    of a message that holds a secret; role `none`, open to anyone, strangers included (`whoami`)."""
    if role not in ("viewer", "operator", "admin", "none"):
        raise ValueError(f"command {name!r}: role must be viewer, operator or admin (got {role!r})")

    def wrap(fn: F) -> F:
        spec = spec_of(fn, name, Role[role], tuple(aliases), tuple(examples), args=args,
                       positionals=None if positionals is None else tuple(positionals))  # fmt: skip
        spec = replace(spec, summary=summary or spec.summary, summary_zh=summary_zh, confirm=confirm,
                       job_params=job_params, raw=raw, redact=redact)  # fmt: skip
        setattr(fn, _SPEC, spec)
        return fn

    return wrap


def spec_of(fn: Callable[..., Any], name: str, role: Role, aliases: tuple[str, ...] = (),
            examples: tuple[str, ...] = (), *, args: type[BaseModel] | None = None,
            positionals: tuple[str, ...] | None = None) -> CommandSpec:  # fmt: skip
    """The command spec a function declares by its signature and docstring."""
    where = getattr(fn, "__qualname__", name)
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"command {name!r}: {where} must be an async def")
    params = list(inspect.signature(fn).parameters.values())
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        raise TypeError(f"command {name!r}: {where} takes the handler context as its first parameter")
    fields: dict[str, Any] = {}
    described = _argument_docs(inspect.getdoc(fn) or "")
    injected: dict[str, Callable[[CommandContext[Any]], Any]] = {}
    for p in params[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"command {name!r}: {where} cannot take *{p.name}; name each argument")
        hint = _resolve(p.annotation, fn) if p.annotation is not p.empty else p.empty
        if p.default is p.empty and hint in DEPENDENCIES:
            injected[p.name] = DEPENDENCIES[hint]
            continue
        if hint is p.empty or p.default is p.empty:
            raise TypeError(f"command {name!r}: argument {p.name!r} of {where} needs a type hint and a default"
                            f" (or, for a dependency, one of the types {', '.join(sorted(_BY_NAME))})")  # fmt: skip
        fields[p.name.lower()] = (hint, Field(p.default, description=described.get(p.name)))
    if args is not None and fields:
        raise TypeError(f"command {name!r}: {where} declares its arguments twice (parameters and args=)")
    names = {p.name.lower(): p.name for p in params[1:]}
    model = args or create_model(  # type: ignore[call-overload]
        f"{name.title().replace('-', '')}Args", __config__=ConfigDict(extra="forbid"), **fields
    )

    async def handler(ctx: CommandContext[Any]) -> HandlerResult:
        given = {names[key]: getattr(ctx.args, key) for key in fields}
        result = await fn(ctx, **given, **{param: get(ctx) for param, get in injected.items()})
        if isinstance(result, (str, Reply, list)):
            return result
        return [] if result is None else str(result)  # None: nothing to say

    summary = (inspect.getdoc(fn) or "").strip().splitlines()
    return CommandSpec(
        name=name, handler=handler, summary=summary[0] if summary else name, aliases=aliases, args=model,
        positionals=tuple(fields) if positionals is None else positionals, role=role,
        examples=examples or (name,),
    )  # fmt: skip


def _argument_docs(doc: str) -> dict[str, str]:
    """Each argument's description from the docstring's `Args:` section (Google style), for `help`:

    Args:
        index: one GPU by its number (default: those in use)
    """
    found: dict[str, str] = {}
    inside, name = False, ""
    for line in doc.splitlines():
        stripped = line.strip()
        if not inside:
            inside = stripped in ("Args:", "Arguments:")
            continue
        if not stripped or (not line.startswith(" ") and stripped.endswith(":")):
            break  # the section ends at a blank line or the next heading
        key, colon, rest = stripped.partition(":")
        key = key.split("(")[0].strip()
        if colon and key.isidentifier() and line.startswith(" " * 4) and not line.startswith(" " * 8):
            name, found[key] = key, rest.strip()
        elif name:
            found[name] = f"{found[name]} {stripped}".strip()  # a description's next line
    return found


def _resolve(annotation: Any, fn: Callable[..., Any]) -> Any:
    """An argument's type; a string one (`from __future__ import annotations`) is evaluated where
    the function was written. Only the arguments': the context's hint may name a type imported
    only for type checkers, and so may a dependency's (`jobs: JobManager` under TYPE_CHECKING)."""
    if isinstance(annotation, str):
        try:
            return eval(annotation, fn.__globals__, {})  # as typing.get_type_hints does: the plugin's own source
        except NameError:
            if annotation.rpartition(".")[2] in _BY_NAME:
                return _BY_NAME[annotation.rpartition(".")[2]]
            raise
    return annotation


def declared(obj: Any) -> Iterator[CommandSpec]:
    """The commands an entry point or module declares: decorated functions (in a module, in
    the order they are defined), or a single decorated function."""
    if isinstance(obj, types.ModuleType):
        for value in vars(obj).values():
            spec = getattr(value, _SPEC, None)
            if isinstance(spec, CommandSpec) and getattr(value, "__module__", None) == obj.__name__:
                yield spec
        return
    spec = getattr(obj, _SPEC, None)
    if not isinstance(spec, CommandSpec):
        raise TypeError(f"{obj!r} is neither a module nor a function decorated with @command")
    yield spec


def load_plugins(registry: CommandRegistry, modules: Iterable[str] = ()) -> list[str]:
    """Register the commands of every installed plugin (entry points) and configured module.
    A plugin that fails to import, or whose words are taken, is left out whole; the returned
    lines (also logged) name it and the error."""
    problems = []
    for label, _, error in _load_each(registry, modules):
        if error is not None:
            line = f"plugin {label} not loaded: {_describe(error)}"
            log.error("%s", line)
            problems.append(line)
    return problems


def check_plugins(registry: CommandRegistry, modules: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """What `chatops check` says of the plugins: each one `chatops run` would load, as it would
    load it (into `registry`, which holds the built-in commands), without logging. Returns the
    lines for those that loaded ("plugin team.cmds: 2 commands") and for those that did not
    ("plugin team.cmds cannot be imported: ModuleNotFoundError: …", or "… not loaded: …" for one
    that imports but whose commands cannot be registered)."""
    loaded, problems = [], []
    for label, count, error in _load_each(registry, modules):
        if error is None:
            loaded.append(f"plugin {label}: {count} command{'s' if count != 1 else ''}")
        elif count is None:
            problems.append(f"plugin {label} cannot be imported: {_describe(error)}")
        else:
            problems.append(f"plugin {label} not loaded: {_describe(error)}")
    return loaded, problems


def _load_each(
    registry: CommandRegistry, modules: Iterable[str]
) -> Iterator[tuple[str, int | None, BaseException | None]]:
    """Load each plugin in turn: (its label, how many commands it registered or None when it
    could not be imported, the error that left it out or None)."""
    sources: list[tuple[str, Callable[[], Any]]] = [
        (f"{ep.value} (entry point {ep.name})", ep.load) for ep in entry_points(group=COMMAND_GROUP)
    ]
    sources += [(module, lambda module=module: importlib.import_module(module)) for module in modules]
    seen: set[str] = set()  # a module both installed and listed in the config counts once
    for label, load in sources:
        try:
            found = load()
        except Exception as exc:  # a plugin's bug or typo never stops the bot
            yield label, None, exc
            continue
        try:
            key = found.__name__ if isinstance(found, types.ModuleType) else f"{found.__module__}.{found.__qualname__}"
            if key in seen:
                continue
            seen.add(key)
            specs = list(declared(found))
            registry.add_all(specs)
        except Exception as exc:
            yield label, 0, exc
            continue
        yield label, len(specs), None


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
