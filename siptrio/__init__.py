"""siptrio: a SIP registrar and stateful proxy on Trio."""

__version__ = "0.1.0"
