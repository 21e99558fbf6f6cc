"""A Panel app, served at ``<user server>/oraculo-panels/hello_panel``."""

import panel as pn

pn.Column(
    pn.pane.Markdown("# Hello from a plugin\n\nThis panel comes from `oraculo-example-plugin`."),
).servable(title="Example plugin · Oráculo")
