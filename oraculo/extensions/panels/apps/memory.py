"""``panel serve`` entry for the Memory panel (served at ``oraculo-panels/memory``)."""

from oraculo.extensions.panels.memory import create_app

create_app().servable(title="Memory · Oráculo")
