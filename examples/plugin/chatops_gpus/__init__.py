"""`gpus`: what the training host's GPUs are doing, asked from chat (`gpus`, `gpus 0`, `显卡`).

An example of a command plugin: one decorated function, found through the `chatops.commands`
entry point of this package (or `[plugins] modules = ["chatops_gpus"]` without installing it).
"""

from __future__ import annotations

import asyncio
import shutil

from chatops import CommandContext, Lang, command

QUERY = "index,name,utilization.gpu,memory.used,memory.total"


@command("gpus", aliases=["显卡"], examples=["gpus", "gpus 0", "gpus all=true"])
async def gpus(ctx: CommandContext, lang: Lang, index: int | None = None, all: bool = False) -> str:
    """What the training host's GPUs are doing (nvidia-smi).

    Args:
        index: one GPU by its number (default: every GPU in use)
        all: list idle GPUs too
    """
    zh = lang == "zh"  # a dependency: the language the command was typed in
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "这台机器没有 NVIDIA GPU（找不到 nvidia-smi）。" if zh else "No NVIDIA GPU here (nvidia-smi not found)."
    proc = await asyncio.create_subprocess_exec(
        smi, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    if proc.returncode:
        return f"nvidia-smi failed: {err.decode(errors='replace').strip()[:200]}"
    lines = []
    for row in out.decode().strip().splitlines():
        i, name, util, used, total = (part.strip() for part in row.split(","))
        if index is not None and int(i) != index:
            continue
        if not all and int(util) == 0 and index is None:
            continue
        lines.append(f"gpu {i} {name}: {util}% busy, {used}/{total} MiB")
    if not lines:
        return "没有正在使用的 GPU（gpus all=true 列出全部）。" if zh else "No GPU busy (gpus all=true lists them all)."
    return "\n".join(lines)
