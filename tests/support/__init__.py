"""Test support: real SIP clients and an in-process server harness."""
