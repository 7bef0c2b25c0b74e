"""edgefs: few-shot adaptation for edge devices.

Meta-train a backbone on a workstation, export it, then enroll new classes on the
device from a few images and classify a live camera stream, without retraining
the backbone. See DESIGN.md for the map of the package.
"""

__version__ = "0.1.0"
