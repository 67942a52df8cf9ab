"""Kernel capture: eBPF programs, their loader, record layouts, syscall tables, trace files.

Knows nothing of torch, the model, metrics or journald.
"""
