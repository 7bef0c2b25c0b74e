"""``edgefs serve``: the device's own web app (live view, enrollment by button, classes, settings, health).

Needs the optional web stack (``pip install "edgefs[serve]"``: Starlette, uvicorn and
Jinja2), imported only when the app starts. Pages (Jinja2 templates sharing one base,
``edgefs/serve/templates``) and assets (``edgefs/serve/static``) ship in the package (no CDN,
no build step). See :mod:`edgefs.serve.server`
for how the web server sits beside the camera loop, :mod:`edgefs.serve.auth`
for the security model and :mod:`edgefs.serve.app` for the API.
"""
