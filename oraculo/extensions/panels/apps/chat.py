"""``panel serve`` entry for the Chat panel (served at ``oraculo-panels/chat``)."""

from oraculo.extensions.panels.chat import create_app

create_app().servable(title="Chat · Oráculo")
