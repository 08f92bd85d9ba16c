"""Keypoint names in the official spelling and order, quoted once for the tests that need them.

Sources: ViTPose configs/_base_/datasets/coco.py, aic_info.py and ap10k_info.py.
"""

COCO_NAMES = [
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
]
AP10K_NAMES = [  # ap10k_info.py spells them L_Eye, Root of tail, L_F_Paw ...
    "L_Eye",
    "R_Eye",
    "Nose",
    "Neck",
    "Root of tail",
    "L_Shoulder",
    "L_Elbow",
    "L_F_Paw",
    "R_Shoulder",
    "R_Elbow",
    "R_F_Paw",
    "L_Hip",
    "L_Knee",
    "L_B_Paw",
    "R_Hip",
    "R_Knee",
    "R_B_Paw",
]
AIC_NAMES = [
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "head_top",
    "neck",
]
