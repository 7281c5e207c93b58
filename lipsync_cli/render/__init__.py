"""`lipsync render`: speech files in, finished MP4s out."""
