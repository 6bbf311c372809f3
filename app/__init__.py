"""omi-letta: OMI audio in, speaker-attributed conversations into a Letta agent's memory."""

__version__ = "0.1.0"
