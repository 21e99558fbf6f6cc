"""Panel UIs (Workspace, and later Chat, Memory, Voice, Backstage), served by one ``panel serve``."""
