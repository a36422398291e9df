"""Layout readers for the evaluation benchmarks, one module per family; see READERS.

What each layout is (its name, the files it expects, its splits and folds) is the library's one
benchmark table, `emocap_jax.evaluate.registry.LAYOUTS`; this package holds only the code that
reads a release: READERS maps each of those names to its reader. `data_prep.benchmarks` drives
them: it lists a split with `READERS[name]`, decodes the entries in worker processes
(`decode.py`) and writes the records with ShardedRecordWriter; for the multiple-choice
benchmarks it then writes the split's questions (`questions.py`).
"""

from data_prep.benchmark_formats import acted_video, affectnet, ckplus, faba, face_human_bench
from data_prep.benchmark_formats import facexbench, fer, folders, rafdb, video_lists
from data_prep.benchmark_formats.common import LayoutError, Reader, ReaderOptions
from emocap_jax.evaluate.registry import LAYOUTS

_READERS: dict[str, Reader] = {}
for _module in (rafdb, affectnet, fer, folders, ckplus, video_lists, acted_video, faba,
                face_human_bench, facexbench):
    _READERS.update(_module.READERS)
if set(_READERS) != set(LAYOUTS):
    raise ImportError(f"the layout readers {sorted(_READERS)} are not the registry's layouts "
                      f"{sorted(LAYOUTS)}")

# The reader of each registry layout, in LAYOUTS' order.
READERS: dict[str, Reader] = {name: _READERS[name] for name in LAYOUTS}

__all__ = ["READERS", "LayoutError", "Reader", "ReaderOptions"]
