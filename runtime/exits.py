"""Process exit codes, one definition for every command and worker.

A supervisor reads them: 2 and 3 are not worth a blind restart loop without a
look (configuration), 3 is an infrastructure loss that a restart may cure.
"""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0  #: done, or a verdict that passed
EXIT_FAIL: Final = 1  #: the job ran and failed (a gate failed, a check found a divergence)
EXIT_USAGE: Final = 2  #: bad arguments or configuration: fix the input, do not retry as is
EXIT_INFRA: Final = 3  #: broker or database lost/unreachable: retry when it is back
EXIT_INTERRUPTED: Final = 130  #: Ctrl-C

#: ``EXIT_USAGE`` under the name the workers use for a configuration they refuse to start with.
EXIT_CONFIG: Final = EXIT_USAGE
