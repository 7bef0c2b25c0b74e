"""Limits on what edgefs reads from files it did not write itself (bundles, class packs, images).

Every reader checks a file against these before it reads or allocates: a bundle
copied from elsewhere, a class pack from another device or an image from a
folder is untrusted input, and a symlink to ``/dev/zero``, a header that claims
60000 x 60000 pixels or a pack that declares 10^11 shots must give a clear
refusal in bounded memory, not an allocation that takes the device down.

The defaults are far above what a healthy file needs (noted per limit) and far
below what would exhaust a 4 GB Jetson. They are module attributes: a device that
needs more can raise them (``edgefs.limits.MAX_IMAGE_PIXELS = ...``) before reading.
"""

from __future__ import annotations

MiB = 1 << 20

# ---- bundles ---------------------------------------------------------------------------------
#: ``manifest.json``: a few KiB in practice (spec, config, parity figures).
MAX_MANIFEST_BYTES = 4 * MiB
#: ``head.json``: a few hundred bytes in practice.
MAX_HEAD_JSON_BYTES = 4 * MiB
#: ``backbone.onnx`` (hashed in chunks, so this bounds time, not memory; EfficientNet-Lite0 is ~14 MiB).
MAX_ONNX_BYTES = 2048 * MiB
#: ``head.npz`` on disk and its arrays uncompressed, together (a relation head is ~1 MiB).
MAX_HEAD_NPZ_BYTES = 256 * MiB
#: Members of ``head.npz``.
MAX_HEAD_ARRAYS = 64

# ---- engine files ----------------------------------------------------------------------------
#: A serialised TensorRT engine (EfficientNet-Lite0 FP32 at batch 32 is ~30 MiB).
MAX_ENGINE_BYTES = 2048 * MiB

# ---- class packs -----------------------------------------------------------------------------
#: The pack file itself.
MAX_PACK_BYTES = 2048 * MiB
#: Zip members (a pack holds one .npy per class and one JPEG per shot).
MAX_PACK_MEMBERS = 200_000
#: ``pack.json``.
MAX_PACK_JSON_BYTES = 16 * MiB
#: One class's ``.npy`` embeddings.
MAX_PACK_NPY_BYTES = 256 * MiB
#: All members, uncompressed.
MAX_PACK_TOTAL_BYTES = 1024 * MiB
#: Shots one class may declare (a few-shot class has 1-100).
MAX_SHOTS_PER_CLASS = 100_000
#: Classes one pack may declare.
MAX_PACK_CLASSES = 100_000
#: How many times their compressed size a pack's embeddings and thumbnails may declare uncompressed
#: (plus 1 MiB). float32 embeddings deflate about 1.3x (a ReLU network's, a fifth of them zeros) and
#: JPEGs not at all; a member of zeros deflates about 1000x: a zip bomb.
MAX_PACK_EXPANSION = 50

# ---- images ----------------------------------------------------------------------------------
#: An image file on disk (a 48 MP phone JPEG is ~15 MiB).
MAX_IMAGE_FILE_BYTES = 64 * MiB
#: Pixels an image may declare before it is decoded: 8192 x 8192 (about 200 MB as RGB).
MAX_IMAGE_PIXELS = 8192 * 8192

# ---- INT8 calibration (edgefs quantize) --------------------------------------------------------
#: Calibration images one run reads (``--calib-images``; default 300). A few hundred frames fix the
#: activation ranges; more add time (each format tried reads them again) and, for the percentile
#: and entropy calibrators, which keep every activation, memory. A larger request is clamped,
#: with a note: the count is already "at most" (a shorter folder gives fewer).
MAX_CALIB_IMAGES = 2000
#: Held-out images of the parity check (``--parity-images``; default 200), kept in memory with
#: their FP32 and INT8 embeddings (2000 at 224 px: ~300 MB). Clamped like MAX_CALIB_IMAGES.
MAX_PARITY_IMAGES = 2000
