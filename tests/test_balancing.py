# -*- test-case-name: tests.test_balancing -*-
"""
The balancers end to end (SPEC §3 "Dispatch"): an in-process proxy in front
of real backends on 127.0.0.1, which the tests stop, restart and keep busy,
and clients speaking from 127.0.0.2, 127.0.0.3, ... for C{ip_hash}.

L{tests.test_balancers} proves each strategy's arithmetic on its own; these
tests prove the proxy hands the strategies the right candidates and the
right load, so that what a client sees is what the strategy promises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


from tests.helpers import RawClient, Reply, RunningProxy, poll, startProxy, wait
from tests.loopback import (
    NamedBackend,
    configText,
    connectFrom,
    request,
    restart,
    NamedBackendsCase,
)


class _BalancingCase(NamedBackendsCase):
    async def proxy(
        self,
        backends: Sequence[NamedBackend],
        rule: Mapping[str, str] = {},
        weights: Sequence[int] = (),
    ) -> RunningProxy:
        sources = {}
        for n, backend in enumerate(backends):
            keys = {"address": f"127.0.0.1:{backend.port}"}
            if weights:
                keys["weight"] = str(weights[n])
            sources[f"b{n}"] = keys
        return await startProxy(self, configText(sources, rule))


class RoundRobinTests(_BalancingCase):
    """
    C{round_robin}: configuration order, weights honoured smoothly.
    """

    async def test_inOrder(self) -> None:
        """
        30 requests over 3 sources go to each in turn: 10, 10 and 10, in
        configuration order.
        """
        backends = self.backends(3)
        proxy = await self.proxy(backends)
        served = await self.served(proxy, 30)
        self.assertEqual(served, ["b0", "b1", "b2"] * 10)
        self.assertEqual([len(b.requests) for b in backends], [10, 10, 10])

    async def test_weighted(self) -> None:
        """
        Weights 3:1 give 30 and 10 of 40 requests, interleaved: every run of
        four requests holds exactly one for the light source.
        """
        backends = self.backends(2)
        proxy = await self.proxy(backends, weights=[3, 1])
        served = await self.served(proxy, 40)
        self.assertEqual((served.count("b0"), served.count("b1")), (30, 10))
        for start in range(len(served) - 3):
            self.assertEqual(served[start : start + 4].count("b1"), 1, served)


_CLIENTS = [f"127.0.0.{n}" for n in range(2, 14)]


class IPHashTests(_BalancingCase):
    """
    C{ip_hash}: a client address stays on its source; when a source leaves
    or returns only its own clients move.
    """

    async def mapping(self, proxy: RunningProxy, repeat: int = 1) -> dict[str, str]:
        """
        Which source serves each client address (the same on every one of
        C{repeat} requests, or the test fails).
        """
        result = {}
        for client in _CLIENTS:
            served = set(await self.served(proxy, repeat, bind=client))
            self.assertEqual(len(served), 1, f"{client} was sent to {served}")
            result[client] = served.pop()
        return result

    async def test_sticky(self) -> None:
        """
        Every request of a client address goes to the same source, and
        twelve addresses are spread over all three sources.
        """
        backends = self.backends(3)
        proxy = await self.proxy(backends, {"balancer": "ip_hash"})
        mapping = await self.mapping(proxy, repeat=3)
        self.assertEqual(set(mapping.values()), {"b0", "b1", "b2"}, mapping)

    async def test_stableAcrossProxies(self) -> None:
        """
        The mapping depends only on the address and the source names: a
        second proxy with the same configuration (other ports, same names)
        sends every client to the same source.
        """
        first = await self.proxy(self.backends(3), {"balancer": "ip_hash"})
        second = await self.proxy(self.backends(3), {"balancer": "ip_hash"})
        self.assertEqual(await self.mapping(first), await self.mapping(second))

    async def test_minimalRemapping(self) -> None:
        """
        When a source stops, only its clients move (and none gets an
        error); when it is back (after C{fail_timeout}), exactly they
        return to it.
        """
        backends = self.backends(3)
        proxy = await self.proxy(
            backends, {"balancer": "ip_hash", "fail_timeout": "1", "connect_timeout": "0.5"}
        )
        before = await self.mapping(proxy)
        moved = {client for client, name in before.items() if name == "b1"}
        self.assertTrue(moved and len(moved) < len(_CLIENTS), before)

        await backends[1].stop()
        during = await self.mapping(proxy, repeat=2)
        for client, name in during.items():
            if client in moved:
                self.assertIn(name, {"b0", "b2"}, f"{client} during the outage")
            else:
                self.assertEqual(name, before[client], f"{client} moved needlessly")

        restart(backends[1])
        await wait(1.2)  # fail_timeout: b1 gets its trial
        after = await self.mapping(proxy)
        self.assertEqual(after, before)


class FailoverTests(_BalancingCase):
    """
    C{failover}: everything to the first source in rotation, back to it
    when it recovers.
    """

    async def test_failoverAndReturn(self) -> None:
        """
        All requests go to the first source; while it is down, to the
        second (without a client error); while both are, to the third;
        after C{fail_timeout} with the first back, to the first again.
        """
        backends = self.backends(3)
        proxy = await self.proxy(backends, {"balancer": "failover", "fail_timeout": "1"})
        self.assertEqual(await self.served(proxy, 5), ["b0"] * 5)
        await backends[0].stop()
        self.assertEqual(await self.served(proxy, 5), ["b1"] * 5)
        await backends[1].stop()
        self.assertEqual(await self.served(proxy, 5), ["b2"] * 5)
        restart(backends[0])
        restart(backends[1])
        await wait(1.2)
        self.assertEqual(await self.served(proxy, 5), ["b0"] * 5)


class LeastConnTests(_BalancingCase):
    """
    C{least_conn}: the source with the fewest requests in flight.
    """

    async def hold(
        self, proxy: RunningProxy, backends: Sequence[NamedBackend], reply: Reply
    ) -> tuple[RawClient, str, str]:
        """
        Send C{GET /hold}, which every backend answers per C{reply} (and so
        keeps in flight), and wait until one backend has it.

        @return: The client, the busy backend's name and the other's.
        """
        for backend in backends:
            backend.behaviour.targets[b"/hold"] = reply
        client = await connectFrom(self, proxy.port)
        client.send(request(target=b"/hold"))
        self.assertTrue(
            await poll(lambda: any(b.requests for b in backends), 3), "/hold never arrived"
        )
        busy = next(b.name for b in backends if b.requests)
        idle = next(b.name for b in backends if not b.requests)
        return client, busy, idle

    async def test_busyBeforeHead(self) -> None:
        """
        While one source has not answered a request, every other request
        goes to the other source; once that request is over (its client
        gone), both share the requests again.
        """
        backends = self.backends(2)
        proxy = await self.proxy(backends, {"balancer": "least_conn"})
        client, busy, idle = await self.hold(proxy, backends, Reply(hang=True))
        self.assertEqual(await self.served(proxy, 6), [idle] * 6)
        await client.abort()
        held = next(b for b in backends if b.name == busy)
        self.assertTrue(await poll(lambda: not held.open, 3), "held backend request not cancelled")
        self.assertEqual(set(await self.served(proxy, 4)), {"b0", "b1"})

    async def test_busyStreamingBody(self) -> None:
        """
        A request whose response is still streaming (head and part of the
        body relayed, the rest to come) is still in flight: the other
        source gets the next requests until it is over.
        """
        backends = self.backends(2)
        proxy = await self.proxy(backends, {"balancer": "least_conn"})
        client, busy, idle = await self.hold(
            proxy, backends, Reply(body=b"x" * 100000, cut=100, stall=True)
        )
        self.assertTrue(await poll(lambda: bool(client.parser.responses), 3), "no head relayed")
        self.assertEqual(await self.served(proxy, 6), [idle] * 6)
        await client.abort()
        held = next(b for b in backends if b.name == busy)
        self.assertTrue(await poll(lambda: not held.open, 3), "held backend response not cut")
        self.assertEqual(set(await self.served(proxy, 4)), {"b0", "b1"})
