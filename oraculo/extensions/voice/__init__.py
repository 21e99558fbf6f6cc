"""Voice: /api/v1/voice, speech in (Whisper) and speech out (Piper) around a chat turn."""
