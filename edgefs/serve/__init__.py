"""``edgefs serve``: the device's own web app (live view, enrollment by button, classes, settings, health).

Needs the optional web stack (``pip install "edgefs[serve]"``: Starlette and
uvicorn), imported only when the app starts. Pages and assets ship in
``edgefs/serve/static`` (no CDN, no build step). See :mod:`edgefs.serve.server`
for how the web server sits beside the camera loop, :mod:`edgefs.serve.auth`
for the security model and :mod:`edgefs.serve.app` for the API.
"""
