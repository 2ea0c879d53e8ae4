"""Helpers every other package may use, importing nothing of Predis's own: the error types, the
one-line CLI parser and the latency histogram. The bottom layer (see the README's layout)."""
