"""`python -m jobs.sdk.describe MODULE`: a Python kind's parameters as JSON, for the bot process.

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
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m jobs.sdk.describe MODULE_OR_PATH", file=sys.stderr)
        return 2
    result = describe_module(args[0])
    # The last line is ours: whatever the module printed while importing comes before it.
    sys.stdout.write("\n" + json.dumps(result, default=str) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
