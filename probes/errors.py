"""Errors a user can hit when capture cannot start; each message names the fix.

The CLI turns each class into one line and its own exit code (daemon/exitcodes.py).
"""


class CaptureError(Exception):
    """Capture cannot work on this host as it is."""


class PrivilegeError(CaptureError):
    """Not root and missing CAP_BPF / CAP_PERFMON."""


class BpfUnavailableError(CaptureError):
    """The bpf() syscall is refused or absent."""


class TracepointMissingError(CaptureError):
    """A tracepoint sysdream attaches to does not exist (or tracefs is not mounted)."""


class HeadersMissingError(CaptureError):
    """bcc finds no kernel headers to compile against."""


class BccMissingError(CaptureError):
    """The bcc Python bindings (Debian's python3-bpfcc) do not import."""


class RingBufferUnsupportedError(CaptureError):
    """The kernel has no BPF ring buffer (Linux < 5.8)."""


class ProgramLoadError(CaptureError):
    """The BPF program failed to compile, verify or attach."""


class TraceFileError(Exception):
    """A trace or dataset file cannot be read."""
