"""`lipsync live`: audio sources (microphone, file, voice agent), frame scheduling, the window and the recorder.

The session's entry points are in `session`: `LiveOptions`, `check_live`, `run_live`, `LiveSummary`.
"""
