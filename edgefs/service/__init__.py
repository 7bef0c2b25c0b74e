"""The device service: what enrolls, classifies and manages classes on the device.

:mod:`edgefs.service.classifier` (the bundle's engine, the class store and the head as one
object), :mod:`edgefs.service.options` (the engine and head it is opened with, in one object),
:mod:`edgefs.service.quality` (the shot quality gate), :mod:`edgefs.service.views`
(several views per shot), :mod:`edgefs.service.classes` (list, remove, rename, export,
import: one API the CLI and the web app both call) and :mod:`edgefs.service.reembed`
(carry a store to another bundle). It sits above the store, the heads and the runtime and
below the camera loop, the web app and the CLI.
"""
