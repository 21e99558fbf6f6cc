"""``panel serve`` entry for the Workspace panel (served at ``oraculo-panels/workspace``)."""

from oraculo.extensions.panels.workspace import create_app

create_app().servable(title="Workspace · Oráculo")
