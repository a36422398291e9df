"""Plain NumPy references for the mined and label-positive targets (`emocap_jax.mining`), and
the random batch and labels that test_mining.py and test_losses.py check them on."""
import numpy as np

N, DIM, GUIDE_DIM, CHUNK = 32, 16, 6, 8
RTOL, ATOL = 1e-5, 1e-6


def random_batch():
    """Unit image, text and guide embeddings of N records."""
    rng = np.random.default_rng(0)
    return dict(image=unit(rng.normal(size=(N, DIM))), text=unit(rng.normal(size=(N, DIM))),
                guide=unit(rng.normal(size=(N, GUIDE_DIM))))


def random_labels():
    """Label ids of N records in 5 classes, three of them -1 (unlabelled)."""
    rng = np.random.default_rng(3)
    lab = rng.integers(0, 5, size=N).astype(np.int32)
    lab[[0, 7, 19]] = -1  # unlabelled records keep only their own pair
    return lab


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def assert_close(actual, expected, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol, atol=atol)


def np_mined_targets(text_guide, image_guide, mode, threshold, top_k, weight, image_threshold=None,
                      mutual=False):
    n = (text_guide if text_guide is not None else image_guide).shape[0]
    guides = []
    if mode in ("text", "both"):
        guides.append((unit(text_guide.astype(np.float64)), threshold))
    if mode in ("image", "both"):
        guides.append((unit(image_guide.astype(np.float64)),
                       threshold if image_threshold is None else image_threshold))
    # kth[g][i]: row i's k-th largest off-diagonal similarity under guide g (the cap).
    kth = [[sorted((float(g[i] @ g[m]) for m in range(n) if m != i), reverse=True)[top_k - 1]
            if 0 < top_k < n - 1 else -np.inf for i in range(n)] for g, _ in guides]
    targets = np.zeros((n, n))
    for i in range(n):
        targets[i, i] = 1.0
        if mode == "off":
            continue
        for j in range(n):
            if j == i:
                continue
            ok = True
            for (g, thr), kth_g in zip(guides, kth):
                s = float(g[i] @ g[j])
                if s < thr or s < kth_g[i] or (mutual and s < kth_g[j]):
                    ok = False
            if ok:
                targets[i, j] += weight
        targets[i] /= targets[i].sum()
    return targets


def np_label_targets(labels, mined=None, weight=0.0):
    """Row i: uniform over {i} and every j with labels[j] == labels[i] >= 0, plus `weight` on each
    mined column that is not already a positive, L1-normalised (UniCL's target, with mining)."""
    n = len(labels)
    targets = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            positive = i == j or (labels[i] >= 0 and labels[i] == labels[j])
            if positive:
                targets[i, j] = 1.0
            elif mined is not None and mined[i, j]:
                targets[i, j] = weight
        targets[i] /= targets[i].sum()
    return targets
