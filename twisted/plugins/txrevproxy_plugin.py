"""
The C{revproxy} twistd plugin.  Only names the service maker: every twistd
run imports every plugin file, so nothing heavy is imported here.
"""

from twisted.application.service import ServiceMaker

revproxy = ServiceMaker(
    "txrevproxy",
    "txrevproxy.tap",
    "An HTTP reverse proxy and load balancer (Cherokee-style, on Twisted)",
    "revproxy",
)
