"""Keypoints in the 137-point OpenPose layout (``hemo_jax.contract.keypoint_layout``):
``openpose`` reads OpenPose's JSON folders, ``openpose_binary`` runs the OpenPose binary to
write them. Pose estimators that fill the same layout belong here. Imports nothing else of
preprocess.
"""
