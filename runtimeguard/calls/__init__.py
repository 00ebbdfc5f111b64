"""Function calls: uprobes and USDT probes, symbols, call paths and their hashes."""
