"""matplotlib, the optional `plots` extra, for the verbs' --plot: the daemon never draws,
so the service and the .deb go without it, and a --plot without it is one line naming the
fix (exit 19) before any work, not a traceback after it.
"""

from __future__ import annotations

from ..exitcodes import MissingPackageError


def pyplot(skip: str = "leave out --plot"):
    """matplotlib.pyplot drawing to files (Agg); MissingPackageError when it cannot be
    imported (`skip` says how to do without)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingPackageError(
            "--plot needs matplotlib, which cannot be imported here: pip install "
            "'sysdream[plots]' (or apt install python3-matplotlib), or "
            f"{skip}") from None
    return plt
