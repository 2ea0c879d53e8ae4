"""The data layer: one access-log format, synthetic workloads, real-trace readers and validation.

Everything downstream (training, simulation, replay) reads access logs through :mod:`accesslog.log`.
"""

from accesslog.log import SCHEMA, AccessLog, iter_batches, read_log, write_log

__all__ = ["SCHEMA", "AccessLog", "iter_batches", "read_log", "write_log"]
