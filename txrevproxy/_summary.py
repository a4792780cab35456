# -*- test-case-name: tests.test_cli -*-
"""
A short human-readable account of what a configuration runs, printed by
C{python -m txrevproxy check} and logged when the proxy starts.
"""

from __future__ import annotations

from ._config import Configuration

__all__ = ["summary"]


def _condition(condition: object) -> str:
    name = type(condition).__name__.lower()
    fields = getattr(condition, "__attrs_attrs__", ())
    args = []
    for field in fields:
        value = getattr(condition, field.name)
        if hasattr(value, "pattern"):
            args.append(value.pattern)
        elif isinstance(value, (frozenset, tuple)):
            args.extend(sorted(str(v) if not isinstance(v, bytes) else v.decode() for v in value))
        elif isinstance(value, bytes):
            args.append(value.decode())
        elif hasattr(value, "matches"):
            args.append(_condition(value))
        else:
            args.append(str(value))
    return " ".join([name, *args])


def summary(config: Configuration) -> list[str]:
    """
    The lines describing listeners, sources, vservers and their rules in
    match order.
    """
    lines = [f"listen: {endpoint}" for endpoint in config.server.listen]
    for source in config.sources:
        line = f"source {source.name}: {source.address} ({source.type}"
        if source.weight != 1:
            line += f", weight {source.weight}"
        if source.type == "interpreter":
            line += ": " + " ".join(source.interpreter)
        lines.append(line + ")")
    for vserver in config.vservers:
        hosts = " ".join(vserver.hosts) or ("(any other host)" if vserver.name == "default" else "-")
        lines.append(f"vserver {vserver.name}: {hosts}")
        for rule in config.rules_of(vserver.name):
            conditions = " and ".join(_condition(c) for c in rule.match)
            target = rule.handler
            if rule.proxy is not None:
                target += f" to {' '.join(rule.proxy.sources)} ({rule.proxy.balancer})"
            elif rule.redirect is not None:
                target += f" {rule.redirect.status} {rule.redirect.url}"
            flags = " [internal]" if rule.internal else ""
            lines.append(f"  rule {rule.name} (priority {rule.priority}){flags}: {conditions} -> {target}")
    return lines
