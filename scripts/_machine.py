"""Shared by the scripts that store measurements (scripts/calibration_spread.py,
scripts/target_bpw.py): what machine and which versions measured them."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch


def processor() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The record's ``"machine"``: processor, torch's CPU capability, torch and transformers."""
    import transformers

    return {
        "processor": processor(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
