"""``panel serve`` entry for the Backstage panel (served at ``oraculo-panels/backstage``)."""

from oraculo.extensions.panels.backstage import create_app

create_app().servable(title="Backstage · Oráculo")
