# -*- test-case-name: tests.test_loader -*-
"""
Tests for L{txrevproxy._loader}: every section and key of SPEC §2 parses
into the configuration records, and every kind of mistake is reported as
one line, C{FILE:LINE: [SECTION] KEY: MESSAGE}.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.certs import CertificateAuthority
from txrevproxy import ConfigError, load_config, parse_config
from txrevproxy._config import Redirect, SourceAddress
from txrevproxy._rules import TLS, Directory, Method, Not

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def temporaryDirectory(case: SynchronousTestCase) -> str:
    directory = tempfile.mkdtemp(prefix="txrevproxy-loader-")
    case.addCleanup(shutil.rmtree, directory)
    return directory


class FullConfigurationTests(SynchronousTestCase):
    """
    A file that uses every key of every section.
    """

    def setUp(self) -> None:
        self.dir = temporaryDirectory(self)
        self.ca = str(CertificateAuthority().write(Path(self.dir)))
        for name in ("www", "errors", "static"):
            os.mkdir(os.path.join(self.dir, name))
        text = f"""
# A comment line
; another
[server]
listen = tcp:8080:interface=127.0.0.1
    tcp:8081   # inline comment
server_tokens = Front/1 ; comment
access_log = off
timeout = 30.5
header_timeout = 2
max_body_size = 10m
trusted_proxies = 10.0.0.0/8
    192.168.0.1
workers = 3

[source:app]
type = host
address = http://127.0.0.1:9000
weight = 5
spawn_timeout = 3

[source:secure]
address = https://backend.example
tls_ca = {self.ca}
tls_verify = yes

[source:insecure]
address = https://[::1]:8443
tls_verify = no

[source:sock]
address = unix:/run/app.sock

[source:prog]
type = interpreter
address = 127.0.0.1:9100
interpreter = python3 -m http.server 9100 --bind '127.0.0.1'
env = A=1
    B=two words
spawn_timeout = 0.5

[vserver:default]
document_root = {self.dir}/www

[vserver:site]
hosts = Example.com *.example.com
document_root = {self.dir}/www
error_pages = {self.dir}/errors

[rule:api]
vserver = site
priority = 10
match = directory /api
    not method TRACE
    not tls
handler = proxy
sources = app secure insecure sock prog
balancer = least_conn
reuse_connections = 4
allow_keepalive = no
keepalive_timeout = 1.5
preserve_host = yes
preserve_server = yes
vserver_errors = yes
request_rewrite = ^/api/v1/(.*)$ /v1/$1
request_add_headers = X-Env: prod
    X-Two: a: b
request_hide_headers = Cookie X-Debug
reply_rewrite = ^http://app/(.*) https://example.com/$1
reply_add_headers = X-Frame-Options: DENY
reply_hide_headers = X-Powered-By
strip_directory = yes
x_sendfile = off
connect_timeout = 1
read_timeout = 20
max_fails = 3
fail_timeout = 30
health_check = /healthz
health_interval = 2

[rule:files]
vserver = site
match = extensions css js
handler = file
document_root = {self.dir}/static
internal = yes

[rule:old]
vserver = site
priority = 5
match = fullpath /old
handler = redirect
redirect = 301 https://example.com$path

[rule:fallback]
match = default
handler = proxy
sources = app
"""
        self.path = os.path.join(self.dir, "full.ini")
        with open(self.path, "w") as f:
            f.write(text)
        self.config = load_config(self.path)

    def test_server(self) -> None:
        server = self.config.server
        self.assertEqual(server.listen, ("tcp:8080:interface=127.0.0.1", "tcp:8081"))
        self.assertEqual(server.server_tokens, "Front/1")
        self.assertEqual(server.access_log, "off")
        self.assertEqual(server.timeout, 30.5)
        self.assertEqual(server.header_timeout, 2.0)
        self.assertEqual(server.max_body_size, 10 * 1024 * 1024)
        self.assertEqual(
            server.trusted_proxies,
            (
                ipaddress.ip_network("10.0.0.0/8"),
                ipaddress.ip_network("192.168.0.1/32"),
            ),
        )
        self.assertEqual(server.workers, 3)

    def test_sources(self) -> None:
        sources = self.config.source_map
        self.assertEqual(list(sources), ["app", "secure", "insecure", "sock", "prog"])
        app = sources["app"]
        self.assertEqual(
            (app.type, app.address, app.weight, app.spawn_timeout),
            ("host", SourceAddress("http", "127.0.0.1", 9000), 5, 3.0),
        )
        secure = sources["secure"]
        self.assertEqual(secure.address, SourceAddress("https", "backend.example", 443))
        self.assertEqual(secure.address.host_header, b"backend.example")
        self.assertEqual(secure.tls_ca, self.ca)
        self.assertTrue(secure.tls_verify)
        insecure = sources["insecure"]
        self.assertEqual(insecure.address, SourceAddress("https", "::1", 8443))
        self.assertEqual(insecure.address.host_header, b"[::1]:8443")
        self.assertFalse(insecure.tls_verify)
        self.assertEqual(
            sources["sock"].address, SourceAddress("unix", path="/run/app.sock")
        )
        prog = sources["prog"]
        self.assertEqual(prog.type, "interpreter")
        self.assertEqual(
            prog.interpreter,
            ("python3", "-m", "http.server", "9100", "--bind", "127.0.0.1"),
        )
        self.assertEqual(prog.env, (("A", "1"), ("B", "two words")))
        self.assertEqual(prog.spawn_timeout, 0.5)

    def test_vservers(self) -> None:
        vservers = {v.name: v for v in self.config.vservers}
        self.assertEqual(set(vservers), {"default", "site"})
        site = vservers["site"]
        self.assertEqual(site.hosts, ("example.com", "*.example.com"))
        self.assertEqual(site.document_root, os.path.join(self.dir, "www"))
        self.assertEqual(site.error_pages, os.path.join(self.dir, "errors"))

    def test_ruleOrder(self) -> None:
        """
        Rules are in match order: highest priority first, file order among
        equals.
        """
        self.assertEqual(
            [r.name for r in self.config.rules], ["api", "old", "files", "fallback"]
        )
        self.assertEqual(
            [r.name for r in self.config.rules_of("site")], ["api", "old", "files"]
        )

    def test_proxyRule(self) -> None:
        rule = self.config.rules[0]
        self.assertEqual(
            (rule.vserver, rule.priority, rule.handler), ("site", 10, "proxy")
        )
        self.assertEqual(
            rule.match,
            (Directory("/api"), Not(Method(frozenset({b"TRACE"}))), Not(TLS())),
        )
        self.assertTrue(rule.strip_directory)
        self.assertEqual(rule.strip_prefix, "/api")
        proxy = rule.proxy
        assert proxy is not None
        self.assertEqual(proxy.sources, ("app", "secure", "insecure", "sock", "prog"))
        self.assertEqual(proxy.balancer, "least_conn")
        self.assertEqual(proxy.reuse_connections, 4)
        self.assertFalse(proxy.allow_keepalive)
        self.assertEqual(proxy.keepalive_timeout, 1.5)
        self.assertTrue(proxy.preserve_host)
        self.assertTrue(proxy.preserve_server)
        self.assertTrue(proxy.vserver_errors)
        self.assertEqual(proxy.request_rewrite[0].apply("/api/v1/x?y"), "/v1/x?y")
        self.assertEqual(
            proxy.request_add_headers, ((b"X-Env", b"prod"), (b"X-Two", b"a: b"))
        )
        self.assertEqual(proxy.request_hide_headers, frozenset({b"cookie", b"x-debug"}))
        self.assertEqual(
            proxy.reply_rewrite[0].apply("http://app/p"), "https://example.com/p"
        )
        self.assertEqual(proxy.reply_add_headers, ((b"X-Frame-Options", b"DENY"),))
        self.assertEqual(proxy.reply_hide_headers, frozenset({b"x-powered-by"}))
        self.assertFalse(proxy.x_sendfile)
        self.assertEqual(
            (
                proxy.connect_timeout,
                proxy.read_timeout,
                proxy.max_fails,
                proxy.fail_timeout,
            ),
            (1.0, 20.0, 3, 30.0),
        )
        self.assertEqual((proxy.health_check, proxy.health_interval), ("/healthz", 2.0))

    def test_fileAndRedirectRules(self) -> None:
        rules = {r.name: r for r in self.config.rules}
        files = rules["files"]
        self.assertEqual(files.document_root, os.path.join(self.dir, "static"))
        self.assertTrue(files.internal)
        self.assertIsNone(files.proxy)
        self.assertEqual(
            rules["old"].redirect, Redirect(301, "https://example.com$path")
        )

    def test_defaults(self) -> None:
        """
        A rule that sets only what is required gets the documented defaults.
        """
        proxy = self.config.rules[-1].proxy
        assert proxy is not None
        self.assertEqual(
            (
                proxy.balancer,
                proxy.reuse_connections,
                proxy.allow_keepalive,
                proxy.keepalive_timeout,
                proxy.preserve_host,
                proxy.preserve_server,
                proxy.vserver_errors,
                proxy.x_sendfile,
                proxy.connect_timeout,
                proxy.read_timeout,
                proxy.max_fails,
                proxy.fail_timeout,
                proxy.health_check,
                proxy.health_interval,
            ),
            (
                "round_robin",
                16,
                True,
                4.0,
                False,
                False,
                False,
                True,
                5.0,
                60.0,
                1,
                10.0,
                None,
                5.0,
            ),
        )
        rule = self.config.rules[-1]
        self.assertEqual(
            (rule.vserver, rule.priority, rule.internal, rule.strip_directory),
            ("default", 0, False, False),
        )


class MinimalTests(SynchronousTestCase):
    def test_serverDefaults(self) -> None:
        """
        Without C{[server]} or C{[vserver:default]}, the defaults apply.
        """
        config = parse_config(
            "[source:a]\naddress = 127.0.0.1:1\n[rule:r]\nmatch = default\nhandler = proxy\nsources = a\n"
        )
        server = config.server
        self.assertEqual(
            (
                server.listen,
                server.server_tokens,
                server.access_log,
                server.timeout,
                server.header_timeout,
                server.max_body_size,
                server.trusted_proxies,
                server.workers,
            ),
            (("tcp:8080",), "txrevproxy", "-", 60.0, 10.0, 0, (), 1),
        )
        self.assertEqual([v.name for v in config.vservers], ["default"])
        self.assertEqual(config.sources[0].type, "host")
        self.assertEqual(config.sources[0].weight, 1)
        self.assertTrue(config.sources[0].tls_verify)
        self.assertEqual(config.sources[0].spawn_timeout, 10.0)

    def test_semicolonInsideValue(self) -> None:
        """
        C{#} and C{;} start a comment only after whitespace.
        """
        config = parse_config("[server]\nserver_tokens = a;b#c  ; comment\n")
        self.assertEqual(config.server.server_tokens, "a;b#c")

    def test_siteIni(self) -> None:
        """
        The shipped C{conf/site.ini} loads.
        """
        config = load_config(os.path.join(REPO, "conf", "site.ini"))
        self.assertEqual([s.name for s in config.sources], ["one", "two"])
        self.assertEqual({s.type for s in config.sources}, {"interpreter"})


_ONE_LINE = re.compile(
    r"^(?P<path>[^:]+):(?P<line>\d+): \[(?P<section>[^\]]+)\](?: (?P<key>[a-z_]+))?: (?P<message>.+)$"
)

_BASE = """[source:a]
address = 127.0.0.1:9000
[rule:r]
match = default
handler = proxy
sources = a
"""


class ErrorReportTests(SynchronousTestCase):
    """
    Each kind of mistake gives one L{ConfigError} whose text is one line
    naming the file, line, section and key.
    """

    def setUp(self) -> None:
        self.dir = temporaryDirectory(self)

    def assertReported(
        self, text: str, section: str, key: str | None, line: int, message: str = ""
    ) -> str:
        """
        Loading C{text} fails with one line naming C{section}, C{key} and
        C{line}, whose message contains C{message}.
        """
        path = os.path.join(self.dir, "bad.ini")
        with open(path, "w") as f:
            f.write(text)
        with self.assertRaises(ConfigError) as caught:
            load_config(path)
        report = str(caught.exception)
        self.assertNotIn("\n", report)
        match = _ONE_LINE.match(report)
        self.assertIsNotNone(match, report)
        assert match is not None
        self.assertEqual(
            (
                match.group("path"),
                match.group("section"),
                match.group("key"),
                int(match.group("line")),
            ),
            (path, section, key, line),
            report,
        )
        self.assertIn(message, match.group("message"))
        return report

    def test_unknownSection(self) -> None:
        self.assertReported(
            _BASE + "\n[servr]\nlisten = tcp:1\n", "servr", None, 8, "unknown section"
        )

    def test_sectionWithoutName(self) -> None:
        self.assertReported(
            "[source]\naddress = 127.0.0.1:1\n", "source", None, 1, "unknown section"
        )

    def test_unknownKindOfSection(self) -> None:
        self.assertReported(
            _BASE + "[rules:x]\nmatch = default\n",
            "rules:x",
            None,
            7,
            "unknown section",
        )

    def test_unknownServerKey(self) -> None:
        self.assertReported(
            "[server]\nlisten = tcp:1\nlisten_on = tcp:2\n" + _BASE,
            "server",
            "listen_on",
            3,
            "unknown key",
        )

    def test_unknownSourceKey(self) -> None:
        self.assertReported(
            _BASE.replace("9000\n", "9000\nwieght = 2\n"),
            "source:a",
            "wieght",
            3,
            "unknown key",
        )

    def test_unknownRuleKey(self) -> None:
        self.assertReported(
            _BASE + "balancr = ip_hash\n", "rule:r", "balancr", 7, "unknown key"
        )

    def test_unknownVServerKey(self) -> None:
        self.assertReported(
            _BASE + "[vserver:v]\nhost = a.example\n",
            "vserver:v",
            "host",
            8,
            "unknown key",
        )

    def test_badValues(self) -> None:
        cases = [
            ("[server]\ntimeout = soon\n", "server", "timeout", 2),
            ("[server]\ntimeout = 0\n", "server", "timeout", 2),
            ("[server]\nmax_body_size = 10x\n", "server", "max_body_size", 2),
            (
                "[server]\ntrusted_proxies = 10.0.0.0/33\n",
                "server",
                "trusted_proxies",
                2,
            ),
            ("[server]\nworkers = 0\n", "server", "workers", 2),
            ("[server]\nheader_timeout = -1\n", "server", "header_timeout", 2),
            ("[source:b]\naddress = nowhere\n", "source:b", "address", 2),
            ("[source:b]\naddress = 127.0.0.1:99999\n", "source:b", "address", 2),
            (
                "[source:b]\naddress = 127.0.0.1:1\nweight = heavy\n",
                "source:b",
                "weight",
                3,
            ),
            (
                "[source:b]\naddress = 127.0.0.1:1\nweight = 0\n",
                "source:b",
                "weight",
                3,
            ),
            (
                "[source:b]\naddress = 127.0.0.1:1\ntype = docker\n",
                "source:b",
                "type",
                3,
            ),
            (
                "[source:b]\naddress = 127.0.0.1:1\ntls_verify = maybe\n",
                "source:b",
                "tls_verify",
                3,
            ),
            (
                "[source:b]\naddress = 127.0.0.1:1\ninterpreter = app\n",
                "source:b",
                "interpreter",
                3,
            ),
            (
                "[source:b]\naddress = 127.0.0.1:1\ntype = interpreter\n",
                "source:b",
                "interpreter",
                1,
            ),
            ("[vserver:v]\nhosts = bad_host!\n", "vserver:v", "hosts", 2),
            (
                "[vserver:v]\ndocument_root = /no/such/dir\n",
                "vserver:v",
                "document_root",
                2,
            ),
        ]
        for text, section, key, line in cases:
            self.assertReported(_BASE + text, section, key, line + 6)

    def test_badRuleValues(self) -> None:
        cases = [
            ("balancer = random\n", "balancer"),
            ("priority = high\n", "priority"),
            ("reuse_connections = -1\n", "reuse_connections"),
            ("allow_keepalive = perhaps\n", "allow_keepalive"),
            ("request_rewrite = ( /x\n", "request_rewrite"),
            ("request_add_headers = no colon here\n", "request_add_headers"),
            ("reply_hide_headers = Bad:Name\n", "reply_hide_headers"),
            ("health_check = healthz\n", "health_check"),
            ("read_timeout = 0\n", "read_timeout"),
        ]
        for text, key in cases:
            self.assertReported(_BASE + text, "rule:r", key, 7)
        self.assertReported(
            _BASE.replace("match = default", "match = default\n    sometimes"),
            "rule:r",
            "match",
            4,
            "sometimes",
        )

    def test_missingRequiredKeys(self) -> None:
        self.assertReported(
            "[source:a]\nweight = 2\n", "source:a", "address", 1, "required"
        )
        self.assertReported(
            "[source:a]\naddress = 127.0.0.1:1\n[rule:r]\nhandler = proxy\nsources = a\n",
            "rule:r",
            "match",
            3,
            "required",
        )
        self.assertReported(
            "[source:a]\naddress = 127.0.0.1:1\n[rule:r]\nmatch = default\nsources = a\n",
            "rule:r",
            "handler",
            3,
            "required",
        )
        self.assertReported(
            "[rule:r]\nmatch = default\nhandler = proxy\n",
            "rule:r",
            "sources",
            1,
            "required",
        )
        self.assertReported(
            "[rule:r]\nmatch = default\nhandler = redirect\n", "rule:r", "redirect", 1
        )

    def test_danglingSource(self) -> None:
        self.assertReported(
            _BASE.replace("sources = a", "sources = a b"), "rule:r", "sources", 6, "'b'"
        )

    def test_danglingVServer(self) -> None:
        self.assertReported(
            _BASE + "vserver = nowhere\n", "rule:r", "vserver", 7, "'nowhere'"
        )

    def test_keyOfAnotherHandler(self) -> None:
        """
        A proxy key in a file rule, or a file or redirect key in a proxy
        rule, is reported on that key.
        """
        www = temporaryDirectory(self)
        self.assertReported(
            f"[source:a]\naddress = 127.0.0.1:1\n[rule:f]\nmatch = default\nhandler = file\n"
            f"document_root = {www}\nsources = a\n",
            "rule:f",
            "sources",
            7,
            "proxy",
        )
        self.assertReported(
            _BASE + f"document_root = {www}\n", "rule:r", "document_root", 7
        )
        self.assertReported(
            _BASE + "redirect = 301 https://x/\n", "rule:r", "redirect", 7
        )

    def test_duplicateKey(self) -> None:
        self.assertReported(
            _BASE + "balancer = ip_hash\nbalancer = failover\n",
            "rule:r",
            "balancer",
            8,
            "twice",
        )

    def test_duplicateSection(self) -> None:
        self.assertReported(
            _BASE + "[source:a]\naddress = 127.0.0.1:2\n", "source:a", None, 7, "twice"
        )

    def test_unreadableFile(self) -> None:
        missing = os.path.join(self.dir, "missing.ini")
        with self.assertRaises(ConfigError) as caught:
            load_config(missing)
        self.assertTrue(str(caught.exception).startswith(missing + ": "))
        self.assertNotIn("\n", str(caught.exception))
