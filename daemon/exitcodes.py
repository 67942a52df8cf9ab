"""Exit codes of the sysdream CLI: one per kind of failure a user can fix."""

from __future__ import annotations

from enum import IntEnum

from sysdream.model.bundle import BundleError
from sysdream.probes import errors

from .config import ConfigError


class MetricsPortError(OSError):
    """The metrics endpoint cannot listen where configured."""


class StateDirError(OSError):
    """The state directory cannot be created or written."""


class FleetEndpointError(OSError):
    """A fleet socket cannot bind where configured."""


class MissingPackageError(Exception):
    """An optional Python package an option needs is not installed (matplotlib, the
    `plots` extra, for --plot)."""


class UntrustedError(Exception):
    """An input that claims to come from sysdream but did not: a journald entry another
    user wrote."""


class Exit(IntEnum):
    OK = 0
    FAILURE = 1            # an unexpected internal error (a bug: please report it)
    USAGE = 2              # bad command line (argparse's own code)
    NO_PRIVILEGES = 3
    BPF_UNAVAILABLE = 4
    TRACEPOINT_MISSING = 5
    HEADERS_MISSING = 6
    BCC_MISSING = 7
    RING_BUFFER_UNSUPPORTED = 8
    PROGRAM_LOAD = 9
    BAD_TRACE = 10         # a trace file unreadable or damaged, or one `record` cannot write
    BAD_MODEL = 11         # model bundle missing, corrupt, tampered or incompatible
    BAD_CONFIG = 12        # configuration file unreadable, not TOML, unknown key, bad value
    METRICS_PORT = 13      # the metrics address/port cannot be bound (taken, or no such address)
    STATE_DIR = 14         # the state directory cannot be created or written
    FLEET_ENDPOINT = 15    # a fleet server's socket address cannot be bound
    ANOMALOUS = 16         # `score --exit-status`: a window was anomalous (not an error)
    NOT_RUNNING = 17       # `status`: no daemon runs with this state directory, or stale
    UNTRUSTED = 18         # a journald alert entry sysdream did not write
    MISSING_PACKAGE = 19   # an optional Python package an option needs is not installed
    INTERRUPTED = 130


_BY_ERROR: dict[type[Exception], Exit] = {
    errors.PrivilegeError: Exit.NO_PRIVILEGES,
    errors.BpfUnavailableError: Exit.BPF_UNAVAILABLE,
    errors.TracepointMissingError: Exit.TRACEPOINT_MISSING,
    errors.HeadersMissingError: Exit.HEADERS_MISSING,
    errors.BccMissingError: Exit.BCC_MISSING,
    errors.RingBufferUnsupportedError: Exit.RING_BUFFER_UNSUPPORTED,
    errors.ProgramLoadError: Exit.PROGRAM_LOAD,
    errors.TraceFileError: Exit.BAD_TRACE,
    BundleError: Exit.BAD_MODEL,
    ConfigError: Exit.BAD_CONFIG,
    MetricsPortError: Exit.METRICS_PORT,
    StateDirError: Exit.STATE_DIR,
    FleetEndpointError: Exit.FLEET_ENDPOINT,
    UntrustedError: Exit.UNTRUSTED,
    MissingPackageError: Exit.MISSING_PACKAGE,
}


def exit_code_for(exc: BaseException) -> Exit:
    for cls in type(exc).__mro__:
        if cls in _BY_ERROR:
            return _BY_ERROR[cls]
    return Exit.FAILURE


def exit_code_for_class(cls: type[Exception] | None) -> Exit:
    return _BY_ERROR.get(cls, Exit.FAILURE) if cls else Exit.FAILURE
