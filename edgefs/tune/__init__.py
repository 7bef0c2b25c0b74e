"""``edgefs tune``: measure the settings the camera loop can run a bundle with on this machine, and keep the best.

For every bundle given (an FP32 bundle and its INT8 bundle, or exports of one
checkpoint at other input sizes), every engine this machine has (ONNX Runtime and
OpenVINO on the CPU; TensorRT where an engine that ``edgefs run`` would open is
built), every number of engine threads (1 to the cores) and ``--batch-wait`` 0 and
half a frame period (several cameras only), :func:`tune` runs the real camera loop
(:class:`edgefs.camera.loop.Pipeline`, what ``edgefs run`` runs) with N live
synthetic cameras at F FPS for a few seconds, each setting in a fresh process, and
measures:

* sustained FPS against the N x F offered (each camera's classified frames over the capture
  times from its first to its last one: a camera's opening is not counted), stale frames dropped, capture-to-result
  latency p50/p99, CPU milliseconds per frame (the whole process);
* what the setting costs in accuracy: the cosine of its embeddings of the bundle's
  self-check reference images (:func:`edgefs.runtime.selfcheck.load_reference`) to the
  FP32 model's, and for an INT8 bundle the few-shot accuracy drop its quantisation
  recorded (``quantization_info(bundle)["parity"]["episodes"]``).

A setting *holds* N x F when (:func:`judge`): its sustained FPS is at least
:data:`SUSTAINED` of N x F, it dropped at most :data:`DROP_TOLERANCE` of them as stale (at least 1: a
frame lost while the engine warms up is not a verdict), and its p99 latency is at most
one frame period. Of the settings that hold, :func:`choose` takes the least accuracy
loss (the largest input size, then the least recorded few-shot drop, then the
highest cosine to FP32; differences under :data:`DROP_TIE` points and
:data:`COSINE_TIE` count as ties) and, among those, the least CPU per frame.

The choice is saved as a *profile* per bundle and machine (:func:`profile_path`:
the bundle's fingerprint and a hash of the CPU's model, cores and instruction sets)
that ``edgefs run`` and ``edgefs serve`` read (:func:`apply_profile`): its backend,
threads, batch wait and engine options, unless given on the command line. When
nothing holds, nothing is saved and :func:`tune` says what the machine holds instead.

The package, by job: :mod:`~edgefs.tune.settings` (the bundles and the settings to measure),
:mod:`~edgefs.tune.measure` (one live measurement, in its own process), :mod:`~edgefs.tune.judge`
(the verdict, the choice, the table), :mod:`~edgefs.tune.tuner` (:func:`tune`) and
:mod:`~edgefs.tune.profiles` (the saved profiles, and :func:`apply_profile` for run and serve).

Torch-free (the device side); the engines are imported in the measuring processes only.
"""

from edgefs.tune.judge import (
    COSINE_TIE,
    DROP_TIE,
    DROP_TOLERANCE,
    SUSTAINED,
    advice,
    choose,
    drop_allowance,
    holds_instead,
    judge,
    table,
)
from edgefs.tune.measure import CHILD_GRACE_S, child_main, live_measure, measure
from edgefs.tune.measure import _read_rgb as _read_rgb  # tests read images the way the measurement does
from edgefs.tune.profiles import (
    MAX_PROFILE_BYTES,
    PROFILE_FORMAT,
    PROFILE_VERSION,
    ProfileError,
    apply_profile,
    config_root,
    load_profile,
    machine_identity,
    machine_key,
    profile_path,
    profiles_dir,
)
from edgefs.tune.settings import CPU_BACKENDS, ENGINES, BundleFacts, Setting, available_engines, bundle_facts, plan
from edgefs.tune.tuner import TuneResult, tune

__all__ = [
    "CHILD_GRACE_S", "COSINE_TIE", "CPU_BACKENDS", "DROP_TIE", "DROP_TOLERANCE", "ENGINES", "MAX_PROFILE_BYTES",
    "PROFILE_FORMAT", "PROFILE_VERSION", "SUSTAINED", "BundleFacts", "ProfileError", "Setting", "TuneResult",
    "advice", "apply_profile", "available_engines", "bundle_facts", "child_main", "choose",
    "config_root", "drop_allowance", "holds_instead", "judge", "live_measure", "load_profile", "machine_identity",
    "machine_key", "measure", "plan", "profile_path", "profiles_dir", "table", "tune",
]
