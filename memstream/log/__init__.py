"""Event log implementations behind the `EventLog` interface."""

from memstream.log.base import EventLog, LogReader, LogRecord, Offsets, Position

__all__ = ["EventLog", "LogReader", "LogRecord", "Offsets", "Position"]
