"""Run one fuzz target under atheris (libFuzzer, coverage-guided over Predis's own code).

    python -m fuzz.run TARGET [CORPUS_DIR] [libFuzzer flags: -runs=N -max_total_time=S ...]

The corpus starts from ``fuzz/seeds/TARGET`` (committed) and grows in CORPUS_DIR (default: a
scratch directory under /tmp); a crash is written as ``crash-*`` in the working directory, and
belongs in ``fuzz/regressions/TARGET`` once fixed (``tests/protocol/test_fuzz.py`` replays those).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import atheris

SEEDS = Path(__file__).parent / "seeds"
LAZY = {
    "model_manifest": ("ml.registry",),
    "trace_readers": ("accesslog.traces",),
    "tracking_messages": ("prefetch.tier", "proxy.backchannel"),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print("usage: python -m fuzz.run TARGET [CORPUS_DIR] [libFuzzer flags]", file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    corpus = rest.pop(0) if rest and not rest[0].startswith("-") else tempfile.mkdtemp(prefix=f"fuzz-{name}-")
    with atheris.instrument_imports(include=["proxy", "prefetch", "accesslog", "ml", "common"]):
        import importlib

        from fuzz.targets import TARGETS, tiny_model

        # What a target imports only when it runs, instrumented too (and only its own: the
        # manifest's pulls in torch, which no other target needs).
        for module in LAZY.get(name, ()):
            importlib.import_module(module)
    if name not in TARGETS:
        print(f"fuzz.run: unknown target {name!r}; targets: {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    if name == "model_manifest":
        tiny_model()  # (its seed: a real manifest)
    target = TARGETS[name]
    seeds = SEEDS / name
    dirs = [corpus] + ([str(seeds)] if seeds.is_dir() else [])
    os.makedirs(corpus, exist_ok=True)
    atheris.Setup([sys.argv[0], *rest, *dirs], target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
