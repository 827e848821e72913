"""How long a draining node asks its clients to spread their reconnects over.

A stopping node is gone within a fraction of a second (it stops accepting,
answers in-flight sends, closes); what its clients must not do is arrive at
the remaining nodes all at once. So ``after_ms`` is the time the remaining
nodes need to accept and sync this node's connections, at a measured rate,
and never more than ``server.drain_spread_max_s``: a node holding a dozen
connections asks for about a tenth of a second, not the heartbeat's 30 s
(which made every protocol-following client sit idle for up to half a
minute at each restart of a rolling upgrade).
"""

from __future__ import annotations

#: Connections per second one node takes while it keeps serving its own traffic.
#: The storm benchmark (benchmarks/README.md: 5,000 and 10,000 clients, each 20
#: events behind, reconnecting at once to one node) measured 188-212 accepted
#: and synced per second with that node's core saturated; half of it leaves
#: the node that receives them room for the load it already carries. The
#: spread assumes one remaining node takes them all (the conservative case:
#: with more nodes the reconnects are spread further than needed).
RECONNECT_RATE_PER_S = 100


def reconnect_spread_ms(connections: int, max_s: float, rate_per_s: float = RECONNECT_RATE_PER_S) -> int:
    """The ``after_ms`` to send: ``connections`` spread at ``rate_per_s``, at most ``max_s``."""
    wanted_ms = 1000 * max(0, connections) / rate_per_s
    return int(min(wanted_ms, 1000 * max_s))
