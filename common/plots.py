"""The PNG charts the commands write (``predis sim --plot``, ``predis replay --plot``): one set of
axes drawn off-screen (matplotlib's Agg), and its file written with the legend and layout they share."""

from __future__ import annotations

import os
from typing import Any


def axes() -> tuple[Any, Any]:
    """A new figure and its axes, drawn without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(8, 5))


def save(fig: Any, ax: Any, out_dir: str, name: str) -> str:
    """Write the figure as ``out_dir/name`` (the directory made if need be); its path."""
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
