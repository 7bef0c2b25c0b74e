"""How tests/golden/store_v1.db was made: a schema-1 class store written by the edgefs of commit a056e19.

    git archive a056e19 edgefs kernels | tar -x -C /tmp/oldedgefs
    PYTHONPATH=/tmp/oldedgefs python tests/golden/make_store_v1.py tests/golden/store_v1.db
"""
import sys
from pathlib import Path

import numpy as np

import edgefs
from edgefs.heads import HeadSpec
from edgefs.runtime.bundle import Bundle, Manifest
from edgefs.service.classifier import Classifier
from edgefs.store import ClassStore

out = Path(sys.argv[1])
assert "oldedgefs" in edgefs.__file__, edgefs.__file__
DIM = 16
manifest = Manifest(backbone={"name": "golden"}, input={"height": 32, "width": 32, "channels": 3, "dtype": "uint8",
                    "layout": "NHWC", "color_order": "RGB"}, output={"dim": DIM},
                    head={"type": "imprint", "params": {}}, fingerprint="9e" * 32)
bundle = Bundle(out.parent, manifest, HeadSpec("imprint"))
rng = np.random.default_rng(16)
with Classifier(bundle, None, ClassStore.open(out, bundle), log=print) as clf:
    for i, name in enumerate(["mug", "cup", "bowl", "plate"]):
        centre = rng.normal(size=DIM)
        emb = (centre + 0.5 * rng.normal(size=(3 + i % 2, DIM))).astype(np.float32)
        images = (rng.integers(0, 4, size=(len(emb), 4, 4, 3)) * 60).astype(np.uint8).repeat(8, 1).repeat(8, 2)
        print(clf.enroll_embedded(name, images, emb, source="golden").summary())
    clf.rename("plate", "dish")
    print("threshold", clf.threshold)
