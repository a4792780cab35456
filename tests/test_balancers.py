# -*- test-case-name: tests.test_balancers -*-
"""
Tests for L{txrevproxy._balancers}.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from random import Random

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txrevproxy._balancers import (
    BALANCER_KINDS,
    FailoverBalancer,
    IBalancer,
    IPHashBalancer,
    LeastConnBalancer,
    RoundRobinBalancer,
    make_balancer,
)

ABC = [("a", 1), ("b", 1), ("c", 1)]


def picks(
    balancer: IBalancer, n: int, candidates: Sequence[str], client: str = "127.0.0.1"
) -> list[str]:
    """
    Make C{n} choices, each request finished before the next starts.
    """
    result = []
    for _ in range(n):
        name = balancer.choose(client, candidates)
        balancer.started(name)
        balancer.finished(name)
        result.append(name)
    return result


def longestRun(sequence: Sequence[str], item: str) -> int:
    """
    The length of the longest run of C{item} in C{sequence}.
    """
    best = run = 0
    for element in sequence:
        run = run + 1 if element == item else 0
        best = max(best, run)
    return best


def randomAddresses(count: int, seed: int = 1234) -> list[str]:
    """
    C{count} distinct pseudo-random IPv4 and IPv6 client addresses.
    """
    rng = Random(seed)
    addresses: set[str] = set()
    while len(addresses) < count:
        if rng.random() < 0.75:
            addresses.add(str(ipaddress.IPv4Address(rng.getrandbits(32))))
        else:
            addresses.add(str(ipaddress.IPv6Address(rng.getrandbits(128))))
    return sorted(addresses)


# Sources with names and weights, and a non-empty subset of them as candidates.
sourceLists = st.lists(
    st.tuples(st.text(min_size=1, max_size=8), st.integers(1, 5)),
    min_size=1,
    max_size=6,
    unique_by=lambda pair: pair[0],
)


@st.composite
def sourcesAndCandidates(draw: st.DrawFn) -> tuple[list[tuple[str, int]], list[str]]:
    sources = draw(sourceLists)
    names = [name for name, _ in sources]
    chosen = draw(st.sets(st.sampled_from(names), min_size=1))
    return sources, [name for name in names if name in chosen]


class CommonTests(SynchronousTestCase):
    """
    What every kind of balancer does.
    """

    def test_kinds(self) -> None:
        """
        The four kinds of the configuration file are known.
        """
        self.assertEqual(
            set(BALANCER_KINDS), {"round_robin", "ip_hash", "failover", "least_conn"}
        )

    def test_interface(self) -> None:
        """
        L{make_balancer} builds, for each kind, an L{IBalancer} of its class.
        """
        classes = {
            "round_robin": RoundRobinBalancer,
            "ip_hash": IPHashBalancer,
            "failover": FailoverBalancer,
            "least_conn": LeastConnBalancer,
        }
        for kind in BALANCER_KINDS:
            balancer = make_balancer(kind, ABC)
            self.assertIsInstance(balancer, classes[kind])
            self.assertTrue(verifyObject(IBalancer, balancer))

    def test_unknownKind(self) -> None:
        """
        An unknown kind is refused with a message naming the valid ones.
        """
        error = self.assertRaises(ValueError, make_balancer, "random", ABC)
        self.assertIn("'random'", str(error))
        self.assertIn("round_robin", str(error))

    def test_invalidSources(self) -> None:
        """
        No sources, a name listed twice, or a weight that is not an integer
        of at least 1 cannot make a balancer.
        """
        for kind in BALANCER_KINDS:
            for sources in (
                [],
                [("a", 1), ("a", 2)],
                [("a", 0)],
                [("a", -1)],
                [("a", 1.5)],
                [("a", True)],
            ):
                self.assertRaises(ValueError, make_balancer, kind, sources)

    def test_invalidCandidates(self) -> None:
        """
        Choosing among no candidates, or among unknown ones, is a caller bug
        and raises; so does starting or finishing an unknown source.
        """
        for kind in BALANCER_KINDS:
            balancer = make_balancer(kind, ABC)
            self.assertRaises(ValueError, balancer.choose, "127.0.0.1", [])
            self.assertRaises(ValueError, balancer.choose, "127.0.0.1", ["a", "z"])
            self.assertRaises(ValueError, balancer.started, "z")
            self.assertRaises(ValueError, balancer.finished, "z")

    @given(sourcesAndCandidates(), st.sampled_from(BALANCER_KINDS), st.text())
    def test_choosesACandidate(
        self, case: tuple[list[tuple[str, int]], list[str]], kind: str, client: str
    ) -> None:
        """
        Whatever the sources, candidates and client, every kind picks one of
        the candidates, repeatedly.
        """
        sources, candidates = case
        balancer = make_balancer(kind, sources)
        for name in picks(balancer, 5, candidates, client):
            self.assertIn(name, candidates)


class RoundRobinTests(SynchronousTestCase):
    """
    Tests for L{RoundRobinBalancer}.
    """

    def test_configurationOrder(self) -> None:
        """
        Equal sources are used in configuration order, starting with the
        first: 30 requests over three sources are 10 each, a, b, c, a ...
        """
        sequence = picks(RoundRobinBalancer(ABC), 30, ["a", "b", "c"])
        self.assertEqual(sequence, ["a", "b", "c"] * 10)

    def test_weightsSmooth(self) -> None:
        """
        Weights 3:1 give three quarters to the heavier source, interleaved
        (a, a, b, a) rather than in bursts.
        """
        sequence = picks(RoundRobinBalancer([("a", 3), ("b", 1)]), 40, ["a", "b"])
        self.assertEqual(Counter(sequence), {"a": 30, "b": 10})
        self.assertEqual(sequence[:4], ["a", "a", "b", "a"])
        self.assertLessEqual(longestRun(sequence, "a"), 3)
        self.assertEqual(longestRun(sequence, "b"), 1)

    def test_weightsSpread(self) -> None:
        """
        A light source's turns are spread between the heavy one's: with
        weights 5:1:1 the two light sources never follow each other.
        """
        balancer = RoundRobinBalancer([("a", 5), ("b", 1), ("c", 1)])
        sequence = picks(balancer, 70, ["a", "b", "c"])
        self.assertEqual(Counter(sequence), {"a": 50, "b": 10, "c": 10})
        self.assertEqual(sequence[:7], ["a", "a", "b", "a", "c", "a", "a"])
        for first, second in zip(sequence, sequence[1:]):
            self.assertFalse({first, second} == {"b", "c"})

    def assertFair(self, sequence: Sequence[str], names: Sequence[str]) -> None:
        """
        Each of C{names}, and nothing else, is in C{sequence}, each within
        one request of an equal share.
        """
        counts = Counter(sequence)
        self.assertEqual(set(counts), set(names))
        share = len(sequence) / len(names)
        for name in names:
            self.assertLess(abs(counts[name] - share), 1 + 1e-9, counts)

    def test_candidatesOnly(self) -> None:
        """
        Sources that are not candidates are skipped and the rest share the
        requests evenly; when they return the rotation is even again.
        """
        balancer = RoundRobinBalancer(ABC)
        self.assertEqual(picks(balancer, 2, ["a", "b", "c"]), ["a", "b"])
        self.assertFair(picks(balancer, 6, ["a", "c"]), ["a", "c"])
        self.assertFair(picks(balancer, 7, ["a", "c"]), ["a", "c"])
        sequence = picks(balancer, 30, ["a", "b", "c"])
        self.assertEqual(Counter(sequence), {"a": 10, "b": 10, "c": 10})
        # Back to a strict rotation: every three in a row are all different.
        self.assertEqual(sequence[3:], sequence[:27])
        self.assertEqual(set(sequence[:3]), {"a", "b", "c"})

    def test_retryGoesToNext(self) -> None:
        """
        A retry among the sources not yet tried takes the next in turn, and
        the tried source is charged for its turn: the counts stay even.
        """
        balancer = RoundRobinBalancer(ABC)
        sequence = [balancer.choose("::1", ["a", "b", "c"])]
        sequence.append(balancer.choose("::1", ["b", "c"]))
        self.assertEqual(sequence, ["a", "b"])
        sequence += picks(balancer, 28, ["a", "b", "c"])
        self.assertFair(sequence, ["a", "b", "c"])

    @given(st.lists(st.integers(1, 10), min_size=1, max_size=6), st.integers(1, 3))
    def test_exactShares(self, weights: list[int], rounds: int) -> None:
        """
        Over whole rounds of C{sum(weights)} requests every source gets
        exactly its weight per round.
        """
        sources = [(f"s{i}", weight) for i, weight in enumerate(weights)]
        names = [name for name, _ in sources]
        sequence = picks(RoundRobinBalancer(sources), sum(weights) * rounds, names)
        self.assertEqual(Counter(sequence), {n: w * rounds for n, w in sources})


class IPHashTests(SynchronousTestCase):
    """
    Tests for L{IPHashBalancer}.
    """

    addresses = randomAddresses(3000)

    def mapping(self, balancer: IBalancer, candidates: Sequence[str]) -> dict[str, str]:
        return {a: balancer.choose(a, candidates) for a in self.addresses}

    def test_sticky(self) -> None:
        """
        A client goes to the same source request after request, whatever
        other clients do in between.
        """
        balancer = IPHashBalancer(ABC)
        first = self.mapping(balancer, ["a", "b", "c"])
        self.assertEqual(self.mapping(balancer, ["a", "b", "c"]), first)
        for address in self.addresses[:50]:
            self.assertEqual(
                set(picks(balancer, 5, ["a", "b", "c"], address)), {first[address]}
            )

    def test_evenDistribution(self) -> None:
        """
        3000 clients over three equal sources get about 1000 each.
        """
        counts = Counter(self.mapping(IPHashBalancer(ABC), ["a", "b", "c"]).values())
        self.assertEqual(set(counts), {"a", "b", "c"})
        for name in "abc":
            self.assertTrue(850 <= counts[name] <= 1150, counts)

    def test_weights(self) -> None:
        """
        Weights 3:1 give the heavier source about three quarters of the
        clients.
        """
        balancer = IPHashBalancer([("a", 3), ("b", 1)])
        counts = Counter(self.mapping(balancer, ["a", "b"]).values())
        self.assertTrue(2100 <= counts["a"] <= 2400, counts)

    def test_minimalRemapping(self) -> None:
        """
        When a source leaves only its clients move, spread over the others;
        when it returns exactly they come back.
        """
        balancer = IPHashBalancer(ABC)
        before = self.mapping(balancer, ["a", "b", "c"])
        during = self.mapping(balancer, ["a", "c"])
        moved = {a for a in self.addresses if before[a] != during[a]}
        self.assertEqual(moved, {a for a in self.addresses if before[a] == "b"})
        counts = Counter(during[a] for a in moved)
        self.assertTrue(counts["a"] > len(moved) / 3 and counts["c"] > len(moved) / 3)
        self.assertEqual(self.mapping(balancer, ["a", "b", "c"]), before)

    def test_addedSource(self) -> None:
        """
        A source added to the configuration takes about its share of the
        clients, only from the others, and moves no one between them.
        """
        before = self.mapping(IPHashBalancer(ABC), ["a", "b", "c"])
        after = self.mapping(IPHashBalancer(ABC + [("d", 1)]), ["a", "b", "c", "d"])
        moved = [a for a in self.addresses if before[a] != after[a]]
        self.assertEqual({after[a] for a in moved}, {"d"})
        self.assertTrue(600 <= len(moved) <= 900, len(moved))

    def test_orderIndependent(self) -> None:
        """
        The mapping depends on the names and the address only: not on the
        order of the candidates, the configuration order or the instance.
        """
        expected = self.mapping(IPHashBalancer(ABC), ["a", "b", "c"])
        self.assertEqual(self.mapping(IPHashBalancer(ABC), ["c", "a", "b"]), expected)
        reordered = IPHashBalancer([("c", 1), ("b", 1), ("a", 1)])
        self.assertEqual(self.mapping(reordered, ["c", "b", "a"]), expected)

    def test_stableAcrossProcesses(self) -> None:
        """
        Another process, with another string-hash seed, maps clients the
        same way, so all workers and instances agree.
        """
        sample = self.addresses[:200]
        balancer = IPHashBalancer(ABC)
        expected = [balancer.choose(a, ["a", "b", "c"]) for a in sample]
        script = (
            "import sys\n"
            "from txrevproxy._balancers import IPHashBalancer\n"
            "b = IPHashBalancer([('a', 1), ('b', 1), ('c', 1)])\n"
            "for line in sys.stdin.read().split():\n"
            "    print(b.choose(line, ['a', 'b', 'c']))\n"
        )
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=root)
        result = subprocess.run(
            [sys.executable, "-c", script],
            input="\n".join(sample),
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            check=True,
        )
        self.assertEqual(result.stdout.split(), expected)

    def test_addressSpellings(self) -> None:
        """
        Spellings of one address go to the same source: an IPv4-mapped IPv6
        address and its IPv4 form, or compressed and expanded IPv6.
        """
        balancer = IPHashBalancer(ABC)
        for address in self.addresses[:300]:
            parsed = ipaddress.ip_address(address)
            if isinstance(parsed, ipaddress.IPv4Address):
                other = f"::ffff:{address}"
            else:
                other = parsed.exploded.upper()
            self.assertEqual(
                balancer.choose(other, ["a", "b", "c"]),
                balancer.choose(address, ["a", "b", "c"]),
            )

    @given(sourcesAndCandidates(), st.text())
    def test_removingOthersKeepsChoice(
        self, case: tuple[list[tuple[str, int]], list[str]], client: str
    ) -> None:
        """
        Taking away any candidate other than the chosen one never changes
        the choice.
        """
        sources, candidates = case
        balancer = IPHashBalancer(sources)
        chosen = balancer.choose(client, candidates)
        for other in candidates:
            if other != chosen:
                rest = [name for name in candidates if name != other]
                self.assertEqual(balancer.choose(client, rest), chosen)


class FailoverTests(SynchronousTestCase):
    """
    Tests for L{FailoverBalancer}.
    """

    def test_firstCandidate(self) -> None:
        """
        Everything goes to the first candidate in configuration order, and
        back to the primary as soon as it is a candidate again.
        """
        balancer = FailoverBalancer(ABC)
        self.assertEqual(set(picks(balancer, 10, ["a", "b", "c"])), {"a"})
        self.assertEqual(set(picks(balancer, 10, ["b", "c"])), {"b"})
        self.assertEqual(balancer.choose("::1", ["c"]), "c")
        self.assertEqual(set(picks(balancer, 10, ["a", "b", "c"])), {"a"})

    def test_configurationOrderWins(self) -> None:
        """
        The configuration order decides, not the order of the candidates.
        """
        balancer = FailoverBalancer([("c", 1), ("a", 5), ("b", 1)])
        self.assertEqual(balancer.choose("::1", ["a", "b", "c"]), "c")
        self.assertEqual(balancer.choose("::1", ["b", "a"]), "a")


class LeastConnTests(SynchronousTestCase):
    """
    Tests for L{LeastConnBalancer}.
    """

    def test_fewestInFlight(self) -> None:
        """
        The source with the fewest requests in flight is chosen, and a
        finished request frees its source again.
        """
        balancer = LeastConnBalancer(ABC)
        for _ in range(3):
            balancer.started("a")
        balancer.started("b")
        self.assertEqual(balancer.choose("::1", ["a", "b", "c"]), "c")
        balancer.started("c")
        balancer.started("c")
        self.assertEqual(balancer.choose("::1", ["a", "b", "c"]), "b")
        self.assertEqual(balancer.choose("::1", ["a", "c"]), "c")
        for _ in range(3):
            balancer.finished("a")
        self.assertEqual(balancer.choose("::1", ["a", "b", "c"]), "a")

    def test_tiesRoundRobin(self) -> None:
        """
        Equally loaded sources take turns in configuration order.
        """
        sequence = picks(LeastConnBalancer(ABC), 9, ["a", "b", "c"])
        self.assertEqual(sequence, ["a", "b", "c"] * 3)
        balancer = LeastConnBalancer(ABC)
        balancer.started("b")
        self.assertEqual(picks(balancer, 4, ["a", "b", "c"]), ["a", "c", "a", "c"])

    def test_concurrent(self) -> None:
        """
        Requests that stay in flight spread evenly over equal sources.
        """
        balancer = LeastConnBalancer(ABC)
        sequence = []
        for _ in range(9):
            name = balancer.choose("::1", ["a", "b", "c"])
            balancer.started(name)
            sequence.append(name)
        self.assertEqual(Counter(sequence), {"a": 3, "b": 3, "c": 3})

    def test_weights(self) -> None:
        """
        In-flight counts are compared relative to the weights: a source of
        weight 2 holds two requests for every one of a weight-1 source.
        """
        balancer = LeastConnBalancer([("a", 2), ("b", 1)])
        balancer.started("a")
        self.assertEqual(balancer.choose("::1", ["a", "b"]), "b")
        balancer.started("b")
        self.assertEqual(balancer.choose("::1", ["a", "b"]), "a")
        counts = Counter()
        for _ in range(30):
            name = balancer.choose("::1", ["a", "b"])
            balancer.started(name)
            counts[name] += 1
        self.assertEqual(counts, {"a": 20, "b": 10})
        idle = picks(LeastConnBalancer([("a", 3), ("b", 1)]), 40, ["a", "b"])
        self.assertEqual(Counter(idle), {"a": 30, "b": 10})

    def test_unmatchedFinish(self) -> None:
        """
        A C{finished} without a C{started} does not make a source look less
        than idle.
        """
        balancer = LeastConnBalancer([("a", 1), ("b", 1)])
        balancer.finished("b")
        balancer.finished("b")
        balancer.started("b")
        self.assertEqual(balancer.choose("::1", ["a", "b"]), "a")
