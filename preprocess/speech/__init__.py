"""Speech in the interview video: its audio track, and a Whisper transcript with timestamps."""
