"""The package's version and the build facts the metrics and the fleet report.
"""

from __future__ import annotations


def version() -> str:
    """This sysdream's version (the installed distribution's; the source tree's if not
    installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version
    try:
        return dist_version("sysdream")
    except PackageNotFoundError:
        return "0+unknown"


def build_info() -> dict[str, str]:
    import platform
    import sys
    torch = sys.modules.get("torch")
    return {"version": version(), "python": platform.python_version(),
            "torch": getattr(torch, "__version__", "") if torch else "",
            "kernel": platform.release()}
