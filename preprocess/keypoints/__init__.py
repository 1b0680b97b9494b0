"""Keypoints in the 137-point OpenPose layout (``hemo_jax.contract.keypoint_layout``):
``openpose`` reads OpenPose's JSON folders, ``openpose_binary`` runs the OpenPose binary to
write them, ``wholebody`` runs pip-installable pose estimators (RTMW and DWPose through
rtmlib, YOLO11-pose through ultralytics) whose points ``coco_wholebody_to_openpose`` maps
into the same layout. May import ``preprocess.video`` (boxes) and the JAX side's contract.
"""
