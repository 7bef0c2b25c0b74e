"""Bounds on the camera loop's settings that a flag or the web app may ask for (one place for both)."""

#: shots one live enrollment may take
MAX_LIVE_SHOTS = 50
#: the largest label smoothing window (frames)
MAX_SMOOTH = 300
