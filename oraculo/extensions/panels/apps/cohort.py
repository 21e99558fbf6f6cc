"""``panel serve`` entry for the Cohort panel (served at ``oraculo-panels/cohort``)."""

from oraculo.extensions.panels.cohort import create_app

create_app().servable(title="Cohort · Oráculo")
