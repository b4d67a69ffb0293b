"""Histogram bounds shared by the farm's and the nodes' metrics, so their panels line up."""

from __future__ import annotations

RENDER_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# A frame's IT energy: a few joules (a tiny test frame) to megajoules (an hour on a
# 300 W node).
ENERGY_JOULES_BUCKETS = (1, 5, 10, 50, 100, 500, 1e3, 5e3, 1e4, 5e4, 1e5, 5e5, 1e6, 5e6)
