"""The operator's dashboard, a JupyterHub service and a Panel app: :mod:`.app` (the Bokeh server
and its start), :mod:`.auth` (hub OAuth for its page and websocket), :mod:`.board` (the Panel
app, its charts and actions), :mod:`.data` (reads with the viewer's token, polars aggregation),
:mod:`.render` (the tables as HTML)."""
