"""`lipsync live`: audio sources (microphone, file, voice agent), frame scheduling, the window and the recorder."""
