"""Video: ``decode`` (frames at a chosen rate, truncation checks), ``detect`` (person
boxes: YOLO, keypoints, full frame), ``track`` (follow the interviewee over the boxes) and
``crops`` (decode → detect → track → 224² JPEG crops). Imports nothing else of preprocess.
"""
