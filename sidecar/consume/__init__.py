"""The consuming layer that Subscribe streams and the router share: group consumers built from a cluster of the
mapping (consumers.py) and at-least-once offset tracking (offsets.py). The native side is meshcore's Consumer; what
each front end does with the records (encode them for an app, copy them to other clusters) is its own."""
