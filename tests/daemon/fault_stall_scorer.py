"""A fake fault, named so (a scorer stuck for good cannot be caused on demand): the
`sysdream` command line with the scorer thread blocked for good after its first batch, for
the watchdog test in test_service.py. Test-only; the product has no switch for it."""

import sys
import threading

from sysdream.daemon.commands.cli import main
from sysdream.daemon.detect import scorer

_shadowed = scorer.Scorer._shadowed


def _stalled(self, parts, found):
    _shadowed(self, parts, found)
    if threading.current_thread() is self.thread:
        self.busy_since = 0.0
        threading.Event().wait()     # never beats again


scorer.Scorer._shadowed = _stalled
sys.exit(main(sys.argv[1:]))
