"""notebooks/colab_tpu_demo.ipynb runs top to bottom on a CPU, headlessly, in a real Jupyter kernel
(nbclient + ipykernel), pointed at a random tiny export and a few synthetic faces through its
environment variables so it does not train the demo."""
import base64
import json
import os
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.inference_fixtures import FACE_CLASSES, make_tiny_export, write_faces

NOTEBOOK = REPO_ROOT / "notebooks" / "colab_tpu_demo.ipynb"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_notebook_is_stored_clean():
    # A checkout's notebook carries no outputs or execution counts (they would go stale and bloat
    # diffs), and its install step only runs on Colab.
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)
    install = "".join(code[0]["source"])
    assert "if IN_COLAB:" in install
    # Colab installs the package itself with pip (its [tpu] extra), not a clone's requirements.
    assert '"pip", "install"' in install and 'f"emocap-jax[tpu] @ git+{REPO_URL}"' in install
    assert "git clone" not in install and "requirements.txt" not in install


@pytest.fixture
def kernel_name(tmp_path, monkeypatch):
    """A kernelspec that runs this interpreter: the "python3" spec found on a machine may name
    another Python (or a bare `python` from PATH) without the project's requirements."""
    spec = tmp_path / "jupyter" / "kernels" / "emocap-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "emocap test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "emocap-test"


@pytest.mark.slow
def test_notebook_runs_headless_on_cpu(tmp_path, kernel_name):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")

    export = make_tiny_export(tmp_path / "model" / "export")
    faces = tmp_path / "faces"
    write_faces(faces, per_class=2)
    output = tmp_path / "out"
    env = dict(os.environ, EMOCAP_CHECKPOINT=str(export), EMOCAP_IMAGES=str(faces),
               EMOCAP_OUTPUT=str(output))
    env.pop("MPLBACKEND", None)  # the kernel's inline backend is what a notebook user gets
    env.pop("EMOCAP_REPO_URL", None)

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name=kernel_name,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute(env=env)  # raises CellExecutionError, with the cell and traceback, on failure

    text, images = [], []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out["output_type"] == "stream":
                text.append(out["text"])
            elif "data" in out:
                text.append(out["data"].get("text/plain", ""))
                if "image/png" in out["data"]:
                    images.append(base64.b64decode(out["data"]["image/png"]))
    text = "".join(text)
    assert "skipping the install step" in text
    assert "backend 'cpu'" in text and "device(s)" in text
    assert "EmoCapCLIP(ViT 32px/8" in text  # the tiny export, not a demo training run
    assert "training the demo" not in text
    for label in FACE_CLASSES:  # one face per class folder, each classified
        assert f"{label}/face_" in text and "-> " in text
    # The bar chart and the explain overlay are drawn inline and saved.
    assert len(images) == 2 and all(image.startswith(PNG_MAGIC) for image in images)
    saved = (output / "zero_shot.png").read_bytes()
    assert saved.startswith(PNG_MAGIC) and len(saved) > 10_000
    overlay = (output / "explain.png").read_bytes()
    assert overlay.startswith(PNG_MAGIC) and len(overlay) > 10_000
    assert f"saved {output / 'explain.png'}" in text
