"""Function calls: uprobes and USDT probes, symbols, call paths and their hashes."""

from .paths import CallFrame, ObservedCallPath, RuntimeCallEvent, RuntimeSignalSummary, SignalStatistics
from .probes import Probe, UsdtNote, parse, usdt_notes
from .tracer import TLS_FUNCTIONS, CallTracer, tls_probes

__all__ = ["CallFrame", "CallTracer", "ObservedCallPath", "Probe", "RuntimeCallEvent", "RuntimeSignalSummary",
           "SignalStatistics", "TLS_FUNCTIONS", "UsdtNote", "parse", "tls_probes", "usdt_notes"]
