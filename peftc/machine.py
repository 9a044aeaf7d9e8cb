"""The machine a number was measured on, for results files: the CPU's model name with its family and model
(several CPU generations report the same name, e.g. "AMD EPYC" for Zen 3, Zen 4 and Zen 5)."""
from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """``"<model name> (family F, model M)"`` from /proc/cpuinfo, else :func:`platform.processor`.

    >>> isinstance(cpu_model(), str)
    True
    """
    try:
        fields: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model") and key not in fields:
                fields[key] = value.strip()
            if not line.strip() and fields:
                break  # the first processor's block is enough
    except OSError:
        return platform.processor()
    if "model name" not in fields:
        return platform.processor()
    if "cpu family" in fields and "model" in fields:
        return f"{fields['model name']} (family {fields['cpu family']}, model {fields['model']})"
    return fields["model name"]
