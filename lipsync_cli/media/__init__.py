"""Media: audio and video files, face tracking, the model cache, the store of loaded models, where model videos live."""
