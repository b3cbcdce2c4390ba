"""Routing, sans-IO: targets and next hops, NAT, RFC 3263 location, routes to trunks."""

from .nat import NatMode, Reach, ViaFacts, classify, ip_of
from .resolver import Resolver, ResolverConfig
from .rfc3263 import Answer, Candidate, LocateError, NaptrRecord, QType, SrvRecord
from .router import Locate, Refuse, Router, RoutingConfig, Target, host_ref, node_tag
from .rules import MatchKind, RouteRule, parse_hop, parse_rule

__all__ = [
    "Answer",
    "Candidate",
    "Locate",
    "LocateError",
    "MatchKind",
    "NaptrRecord",
    "NatMode",
    "QType",
    "Reach",
    "Refuse",
    "Resolver",
    "ResolverConfig",
    "RouteRule",
    "Router",
    "RoutingConfig",
    "SrvRecord",
    "Target",
    "ViaFacts",
    "classify",
    "host_ref",
    "ip_of",
    "node_tag",
    "parse_hop",
    "parse_rule",
]
