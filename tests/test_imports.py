"""Import cost: the CLI and the bot's wiring import no heavy package they do not use (in a fresh
interpreter, so other tests' imports cannot hide one). Timing-free: which modules got loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("aiohttp", "mxnet", "matplotlib")


def loaded_after(code: str) -> dict[str, bool]:
    probe = f"import json, sys\n{code}\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_importing_the_cli_loads_no_heavy_package() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import chatops.cli, sys; print('aiohttp' in sys.modules, 'mxnet' in sys.modules, "
         "'matplotlib' in sys.modules)"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "False"]


def test_a_bot_without_health_endpoint_never_imports_aiohttp(tmp_path: Path) -> None:
    build = (
        "from chatops.app import App\n"
        "from chatops.settings import HealthSettings, Settings\n"
        "app = App(Settings(data_dir={data!r}, health=HealthSettings(listen={listen!r})))\n"
        "assert (app.health is None) == ({listen!r} is None)\n"
    )
    assert loaded_after(build.format(data=str(tmp_path / "off"), listen=None)) == dict.fromkeys(HEAVY, False)
    # With /healthz asked for, the server is built (and aiohttp imported) as before.
    on = loaded_after(build.format(data=str(tmp_path / "on"), listen="127.0.0.1:0"))
    assert on == {"aiohttp": True, "mxnet": False, "matplotlib": False}
