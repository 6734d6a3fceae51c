"""Known bugs, put back on purpose: the simulation must report each (``--mutation NAME``).

A simulation that never fails measures nothing.  Each mutation re-introduces one bug the
simulation was built to find, as a patch applied for one seed's run; tests/sim/test_sim.py checks
that the seeds listed for it report the invariant it breaks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

MUTATIONS: dict[str, Callable[[], contextlib.AbstractContextManager[Any]]] = {}
