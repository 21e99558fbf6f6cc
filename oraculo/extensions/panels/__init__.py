"""Panel UIs (Workspace; later Chat, Memory, Voice, Backstage), served by one ``panel serve``."""
