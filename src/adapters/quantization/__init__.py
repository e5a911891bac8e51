"""The torch side of the `lmdeploy lite` workflows: float models opened for calibration."""
