"""The operator's dashboard, a JupyterHub service: :mod:`.app` (hub OAuth, pages, actions),
:mod:`.data` (reads with the viewer's token, polars aggregation), :mod:`.render` (HTML, SVG)."""
