"""Audio in, speaker-attributed transcript segments out."""

import os

# ONNX Runtime 1.29+ sends usage telemetry to Microsoft from Linux too unless this is set before its first
# session (the VAD's); in PRIVACY_MODE=local nothing may leave the machine, and in `cloud` nobody asked for it.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
