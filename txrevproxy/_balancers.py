# -*- test-case-name: tests.test_balancers -*-
"""
Balancers: the strategies that pick one source for each attempt of a request.

The dispatcher owns availability (which sources are in rotation, which were
already tried for this request) and hands a balancer only the candidates left;
a balancer only decides among them.  Keeping the two apart lets every strategy
honour failures, health checks and retries the same way.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction

from zope.interface import Interface, implementer

__all__ = [
    "BALANCER_KINDS",
    "FailoverBalancer",
    "IBalancer",
    "IPHashBalancer",
    "LeastConnBalancer",
    "RoundRobinBalancer",
    "make_balancer",
]


class IBalancer(Interface):
    """
    A strategy choosing one source per request attempt.
    """

    def choose(client: str, candidates: Sequence[str]) -> str:
        """
        Pick the source for one attempt.

        @param client: The client address as text (C{'127.0.0.2'}, C{'::1'}).
        @param candidates: The non-empty names, in configuration order, of
            the sources in rotation and not yet tried for this request.
        @return: One member of C{candidates}.
        @raise ValueError: If C{candidates} is empty or names an unknown
            source.
        """

    def started(name: str) -> None:
        """
        Note that a request to the source C{name} is now in flight.
        """

    def finished(name: str) -> None:
        """
        Note that a request to the source C{name} ended, whatever the outcome.
        """


class _Balancer:
    """
    What every balancer shares: the configured sources, validated once.

    @ivar _order: Source names in configuration order.
    @ivar _weights: Each source's weight.
    """

    def __init__(self, sources: Sequence[tuple[str, int]]) -> None:
        """
        @param sources: C{(name, weight)} pairs in configuration order; names
            unique, weights integers of at least 1.
        @raise ValueError: If C{sources} is empty or malformed.
        """
        if not sources:
            raise ValueError("a balancer needs at least one source")
        weights: dict[str, int] = {}
        for name, weight in sources:
            if name in weights:
                raise ValueError(f"source {name!r} listed twice")
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
                raise ValueError(
                    f"source {name!r}: weight must be an integer >= 1, not {weight!r}"
                )
            weights[name] = weight
        self._order: tuple[str, ...] = tuple(weights)
        self._weights: Mapping[str, int] = weights

    def _check(self, candidates: Iterable[str]) -> list[str]:
        """
        Validate C{candidates} against the configured sources.

        @return: The candidates as a list, in the order given.
        @raise ValueError: If there are none or one is unknown.
        """
        names = list(candidates)
        if not names:
            raise ValueError("no candidate sources to choose from")
        for name in names:
            if name not in self._weights:
                raise ValueError(f"unknown source {name!r}")
        return names

    def started(self, name: str) -> None:
        """Most strategies ignore load; see L{IBalancer.started}."""
        self._check([name])

    def finished(self, name: str) -> None:
        """Most strategies ignore load; see L{IBalancer.finished}."""
        self._check([name])


@implementer(IBalancer)
class RoundRobinBalancer(_Balancer):
    """
    Smooth weighted round robin, as nginx does it.

    Each pick adds every candidate's weight to its running score, takes the
    highest score (the earliest in configuration order on a tie) and takes
    the total of the candidates' weights off the winner.  Over any run of
    picks each source gets its share within one request, and heavy sources
    are interleaved with light ones instead of served in bursts.  Sources
    that are not candidates keep their score, so they rejoin where they left.
    """

    def __init__(self, sources: Sequence[tuple[str, int]]) -> None:
        super().__init__(sources)
        self._current: dict[str, int] = dict.fromkeys(self._order, 0)

    def choose(self, client: str, candidates: Sequence[str]) -> str:
        """
        See L{IBalancer.choose}; C{client} is ignored.
        """
        names = set(self._check(candidates))
        best: str | None = None
        total = 0
        for name in self._order:
            if name not in names:
                continue
            weight = self._weights[name]
            self._current[name] += weight
            total += weight
            if best is None or self._current[name] > self._current[best]:
                best = name
        assert best is not None
        self._current[best] -= total
        return best


def _clientKey(client: str) -> bytes:
    """
    Canonical bytes for a client address, so that spellings of the same
    address (C{'::1'} and C{'0::1'}, or an IPv4-mapped IPv6 address and its
    IPv4 form) hash alike; an IPv6 zone (C{%eth0}) is ignored.  Text that is
    not an IP address (a Unix socket peer, say) is used as is.
    """
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = (
            ipaddress.ip_address(client.split("%", 1)[0])
        )
    except ValueError:
        return b"text:" + client.encode("utf-8", "surrogatepass")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return b"ip:" + address.packed


def _uniform(name: str, client: bytes) -> float:
    """
    A stable pseudo-random number in the open interval (0, 1) for the pair
    C{(name, client)}: the same in every process and every run, unlike
    L{hash}.
    """
    encoded = name.encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(
        len(encoded).to_bytes(4, "big") + encoded + client, digest_size=8
    ).digest()
    return ((int.from_bytes(digest, "big") >> 11) + 0.5) / 2.0**53


@implementer(IBalancer)
class IPHashBalancer(_Balancer):
    """
    Weighted rendezvous (highest random weight) hashing on the client address.

    Every source scores each client with C{-weight / ln(u)}, C{u} a stable
    hash of the source name and the address, and the highest score wins.
    A client's score for a source never depends on the other sources, so
    when a source leaves only its own clients move, each to its runner-up,
    and they come back when it returns.  Sources get clients in proportion
    to their weights.
    """

    def choose(self, client: str, candidates: Sequence[str]) -> str:
        """
        See L{IBalancer.choose}.
        """
        key = _clientKey(client)
        return max(
            self._check(candidates),
            # The name breaks (astronomically unlikely) ties so that the
            # order of the candidates never matters.
            key=lambda n: (-self._weights[n] / math.log(_uniform(n, key)), n),
        )


@implementer(IBalancer)
class FailoverBalancer(_Balancer):
    """
    Everything to the first candidate in configuration order: the others are
    spares, used only while those before them are out of rotation.
    """

    def choose(self, client: str, candidates: Sequence[str]) -> str:
        """
        See L{IBalancer.choose}; C{client} is ignored.
        """
        return min(self._check(candidates), key=self._order.index)


@implementer(IBalancer)
class LeastConnBalancer(_Balancer):
    """
    The candidate with the fewest requests in flight for its weight.

    Candidates equally loaded (in flight divided by weight) share the
    requests by smooth weighted round robin, so an idle or evenly loaded
    pool is spread as L{RoundRobinBalancer} would spread it.
    """

    def __init__(self, sources: Sequence[tuple[str, int]]) -> None:
        super().__init__(sources)
        self._inFlight: dict[str, int] = dict.fromkeys(self._order, 0)
        self._ties = RoundRobinBalancer([(n, self._weights[n]) for n in self._order])

    def choose(self, client: str, candidates: Sequence[str]) -> str:
        """
        See L{IBalancer.choose}; C{client} is ignored.
        """
        names = self._check(candidates)
        load = {n: Fraction(self._inFlight[n], self._weights[n]) for n in names}
        least = min(load.values())
        return self._ties.choose(client, [n for n in names if load[n] == least])

    def started(self, name: str) -> None:
        """
        See L{IBalancer.started}.
        """
        self._check([name])
        self._inFlight[name] += 1

    def finished(self, name: str) -> None:
        """
        See L{IBalancer.finished}.  An unmatched call is ignored rather than
        raised: it would come from a clean-up path, where raising does harm.
        """
        self._check([name])
        self._inFlight[name] = max(0, self._inFlight[name] - 1)


_KINDS: Mapping[str, Callable[[Sequence[tuple[str, int]]], IBalancer]] = {
    "round_robin": RoundRobinBalancer,
    "ip_hash": IPHashBalancer,
    "failover": FailoverBalancer,
    "least_conn": LeastConnBalancer,
}

BALANCER_KINDS: tuple[str, ...] = tuple(_KINDS)


def make_balancer(kind: str, sources: Sequence[tuple[str, int]]) -> IBalancer:
    """
    Build the balancer a rule's C{balancer} key names.

    @param kind: One of L{BALANCER_KINDS}.
    @param sources: C{(name, weight)} pairs in configuration order.
    @raise ValueError: If C{kind} is unknown or C{sources} invalid.
    """
    try:
        factory = _KINDS[kind]
    except KeyError:
        raise ValueError(
            f"unknown balancer {kind!r}; expected one of {', '.join(BALANCER_KINDS)}"
        ) from None
    return factory(sources)
