"""Layout readers for the evaluation benchmarks, one module per family; see BENCHMARKS.

`data_prep.benchmarks` drives them: it lists a split with `Layout.list_split`, decodes the
entries in worker processes (`decode.py`) and writes the records with ShardedRecordWriter; for
the multiple-choice benchmarks it then writes the split's questions (`questions.py`).
"""

from data_prep.benchmark_formats import acted_video, affectnet, ckplus, faba, face_human_bench
from data_prep.benchmark_formats import facexbench, fer, folders, rafdb, video_lists
from data_prep.benchmark_formats.common import Layout, LayoutError, ReaderOptions

# The converters by --name (the evaluation registry's `converter` field names them).
BENCHMARKS: dict[str, Layout] = {b.name: b for b in (
    rafdb.RAFDB, rafdb.RAFDB_COMPOUND,
    affectnet.AFFECTNET_7, affectnet.AFFECTNET_8,
    fer.FERPLUS, fer.FER2013, fer.FER2013_FOLDERS,
    folders.SFEW, ckplus.CKPLUS, folders.CKPLUS48, ckplus.JAFFE, folders.IMAGEFOLDER,
    video_lists.DFEW, video_lists.FERV39K, video_lists.MAFW, video_lists.MAFW_COMPOUND,
    folders.AFEW, acted_video.CREMA_D, acted_video.RAVDESS, acted_video.ENTERFACE05,
    faba.FABA_BENCH, face_human_bench.FACE_HUMAN_BENCH, facexbench.FACEXBENCH,
)}

__all__ = ["BENCHMARKS", "Layout", "LayoutError", "ReaderOptions"]
