"""Label vocabularies of the face benchmarks: each benchmark's classes in label_id order.

One table for both sides of a dataset: the converters (`data_prep.benchmark_formats`) write
label_id in these orders and the evaluation registry (`emocap_jax.evaluate.registry`) reads them,
so a label_id means the same in the TFRecords and in a report. The code tables are the datasets'
own label codes (file names, annotation columns) that fix the orders.
"""
from __future__ import annotations

# RAF-DB (EmoLabel/list_patition_label.txt: 1..7 / 1..11).
RAFDB_BASIC = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
RAFDB_COMPOUND = (
    "happily surprised", "happily disgusted", "sadly fearful", "sadly angry",
    "sadly surprised", "sadly disgusted", "fearfully angry", "fearfully surprised",
    "angrily surprised", "angrily disgusted", "disgustedly surprised")

# AffectNet expression ids 0..7 (affectnet-7 takes the first 7).
AFFECTNET_EXPRESSIONS = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger",
                         "contempt")

# FER2013's emotion column 0..6; FERPlus's vote columns.
FER2013 = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FERPLUS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
           "contempt")

# CK+ emotion codes 0..7 (0 = neutral, not a benchmark class); JAFFE's file-name codes.
CK_CODES = ("neutral", "anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")
CK_EMOTIONS = CK_CODES[1:]
JAFFE_CODES = {"AN": "anger", "DI": "disgust", "FE": "fear", "HA": "happiness",
               "NE": "neutral", "SA": "sadness", "SU": "surprise"}
JAFFE = tuple(JAFFE_CODES[code] for code in sorted(JAFFE_CODES))

# Class-folder benchmarks.
SFEW = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
CKPLUS48 = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")
AFEW = SFEW

# Video benchmarks with list files, and their official folds (DFEW, MAFW).
DFEW = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")
FERV39K = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
MAFW = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise",
        "contempt", "anxiety", "helplessness", "disappointment")
VIDEO_FOLDS = (1, 2, 3, 4, 5)

# Acted video: CREMA-D's file-name codes, RAVDESS's emotion field 1..8, eNTERFACE'05's folders.
CREMA_CODES = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happy",
               "NEU": "neutral", "SAD": "sad"}
CREMA = tuple(CREMA_CODES.values())
RAVDESS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
ENTERFACE = ("anger", "disgust", "fear", "happiness", "sadness", "surprise")

# FABA-Bench (JackYFL/EmoLA, emollava/eval/eval_FABA.py): `emotions2num` order; AUIndicesMap for
# FABA (the annotation vocabulary) and `select_AUs` (the AUs its AU detection scores).
FABA_EMOTIONS = ("happiness", "sadness", "surprise", "anger", "neutral", "disgust", "fear")
FABA_AU_VOCABULARY = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 16, 17, 20, 23, 24, 25, 26, 27, 43)
FABA_SCORED_AUS = (1, 2, 4, 5, 6, 10, 12, 17, 24, 25, 26, 43)
