"""Audio in, speaker-attributed transcript segments out."""
