"""Offline quantisation workflows (`lmdeploy lite ...`): calibration, then a quantised checkpoint."""
