"""Keypoints for the record: OpenPose JSON, the OpenPose binary, or a pip pose estimator."""
