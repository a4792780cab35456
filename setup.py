"""
Packaging for txrevproxy.

The twistd plugin lives in C{twisted/plugins/}, a namespace directory with no
C{__init__.py} (shipping one would overwrite Twisted's own), so it is listed
by hand next to the packages setuptools finds.
"""

from setuptools import find_packages, setup

setup(
    name="txrevproxy",
    version="0.1.0",
    description="An HTTP reverse proxy and load balancer on Twisted",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["txrevproxy", "txrevproxy.*"])
    + ["twisted.plugins"],
    package_data={"twisted.plugins": ["txrevproxy_plugin.py"], "txrevproxy": ["py.typed"]},
    install_requires=[
        "twisted>=26.10.0",
        "service-identity>=24.1.0",
        "pyopenssl>=25.3.0",
        "attrs>=23.1.0",
        "idna>=3.4",
    ],
    extras_require={
        "http2": ["h2>=3.2,<5", "priority>=1.1.0"],
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "treq>=24.9.1",
            "h2>=3.2,<5",
            "priority>=1.1.0",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Internet :: Proxy Servers",
        "Topic :: Internet :: WWW/HTTP :: HTTP Servers",
    ],
)
