"""The Subscribe side of the sidecar (in progress): offset tracking for at-least-once acks."""
