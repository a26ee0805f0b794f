"""`python -m jobs.sdk.describe MODULE …`: a Python kind's parameters as JSON, for the bot process.

The bot never imports a user's training module (it imports MXNet, and may crash or hang); it runs
this in a child process and rebuilds the model from the printed specs (`jobs.params`).
"""

from __future__ import annotations

import json
import sys

from jobs.params import KindDefinitionError, specs_from_model
from jobs.sdk.host import KindLoadError, kind_parts, load_module


def describe_module(ref: str) -> dict[str, object]:
    try:
        params, train = kind_parts(load_module(ref))
        return {"ok": True, "params": specs_from_model(params), "doc": (params.__doc__ or train.__doc__ or "").strip()}
    except (KindLoadError, KindDefinitionError) as exc:
        return {"ok": False, "error": str(exc)}


def main(argv: list[str] | None = None) -> int:
    """One module: its result. Several: `{module: result}`, from one process, so MXNet (most of a
    description's second) is imported once for all the kinds of a config."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m jobs.sdk.describe MODULE_OR_PATH [MODULE_OR_PATH …]", file=sys.stderr)
        return 2
    results = {ref: describe_module(ref) for ref in dict.fromkeys(args)}
    out: object = results[args[0]] if len(args) == 1 else results
    # The last line is ours: whatever the modules printed while importing comes before it.
    sys.stdout.write("\n" + json.dumps(out, default=str) + "\n")
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
