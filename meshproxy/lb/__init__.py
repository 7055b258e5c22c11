"""Load-balancing policies over a host set: pure, synchronous, and knowing nothing of ours but the host type.

Every balancer is built from hosts, rebuilt with ``update(hosts)`` when hosts, weights or health change, and
asked ``pick(key)`` per request (None when there is no host). Unhealthy hosts are skipped unless too few are
healthy (the panic threshold, default 50 %), in which case all hosts share the load, as in Envoy.
``PriorityBalancer`` spreads load over priority levels of such balancers, and ``SlowStart`` ramps the weight
of newly joined hosts for round robin and least request.
"""

from meshproxy.lb._base import DEFAULT_PANIC_THRESHOLD, Balancer, routable_hosts
from meshproxy.lb._host import BalancedHost
from meshproxy.lb.least_request import LeastRequestBalancer
from meshproxy.lb.maglev import MaglevBalancer
from meshproxy.lb.priority import DEFAULT_OVERPROVISIONING_FACTOR, PriorityBalancer, level_health
from meshproxy.lb.ring_hash import RingHashBalancer
from meshproxy.lb.round_robin import RoundRobinBalancer
from meshproxy.lb.slow_start import SlowStart
from meshproxy.lb.weighted_random import RandomBalancer

__all__ = [
    "DEFAULT_OVERPROVISIONING_FACTOR",
    "DEFAULT_PANIC_THRESHOLD",
    "BalancedHost",
    "Balancer",
    "LeastRequestBalancer",
    "MaglevBalancer",
    "PriorityBalancer",
    "RandomBalancer",
    "RingHashBalancer",
    "RoundRobinBalancer",
    "SlowStart",
    "level_health",
    "routable_hosts",
]
