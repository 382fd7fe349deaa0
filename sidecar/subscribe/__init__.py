"""The Subscribe side of the sidecar: a stream's consumers and session (session.py), its poll thread (poller.py),
and the offsets it may commit for at-least-once acks (offsets.py)."""
