"""``panel serve`` entry for the Usage panel (served at ``oraculo-panels/usage``)."""

from oraculo.extensions.panels.usage import create_app

create_app().servable(title="Usage · Oráculo")
