"""``panel serve`` entry for the Voice panel (served at ``oraculo-panels/voice``)."""

from oraculo.extensions.panels.voice import create_app

create_app().servable(title="Voice · Oráculo")
