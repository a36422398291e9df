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


# MiningConfig.mutual's documented slack: sim_ij within this of row j's k-th value counts.
MUTUAL_TOLERANCE = 1e-5


def np_mined_targets(text_guide, image_guide, mode, threshold, top_k, weight, image_threshold=None,
                      mutual=False):
    """Row i: 1 on the pair and `weight` on every j that passes, under each guide, the threshold,
    the cap (j among the first top_k of row i's other columns ordered by similarity descending,
    then column ascending) and, if mutual, sim_ij >= row j's k-th value - MUTUAL_TOLERANCE;
    L1-normalised."""
    n = (text_guide if text_guide is not None else image_guide).shape[0]
    guides = []
    if mode in ("text", "both"):
        guides.append((unit(text_guide.astype(np.float64)), threshold))
    if mode in ("image", "both"):
        guides.append((unit(image_guide.astype(np.float64)),
                       threshold if image_threshold is None else image_threshold))
    capped = 0 < top_k < n - 1
    # ranked[g][i]: row i's other columns, most similar first, ties to the lower column.
    ranked = [[sorted((m for m in range(n) if m != i), key=lambda m, g=g, i=i: (-float(g[i] @ g[m]), m))
               for i in range(n)] for g, _ in guides]
    # kth[g][i]: row i's k-th largest off-diagonal similarity under guide g; cap[g][i]: its top k.
    kth = [[float(g[i] @ g[r[i][top_k - 1]]) if capped else -np.inf for i in range(n)]
           for (g, _), r in zip(guides, ranked)]
    cap = [[set(r[i][:top_k]) if capped else set(range(n)) for i in range(n)] for r in ranked]
    targets = np.zeros((n, n))
    for i in range(n):
        targets[i, i] = 1.0
        if mode == "off":
            continue
        for j in range(n):
            if j == i:
                continue
            ok = True
            for (g, thr), kth_g, cap_g in zip(guides, kth, cap):
                s = float(g[i] @ g[j])
                if s < thr or j not in cap_g[i] or (mutual and s < kth_g[j] - MUTUAL_TOLERANCE):
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


# Row EDGE_ROW of `threshold_edge_guides` and the columns around its k-th place (top_k 3).
EDGE_ROW, EDGE_ABOVE, EDGE_JUST_ABOVE, EDGE_TIES = 9, 20, 5, (3, 14, 27)
EDGE_JUST_BELOW_IN, EDGE_JUST_BELOW_OUT = 12, 30  # 2e-6 (within MUTUAL_TOLERANCE) and 1e-4 below


def threshold_edge_guides():
    """Guides [N, N] whose similarities sit exactly at a row's k-th value (top_k 3) and just
    either side of it. Row EDGE_ROW is e0; every other record m is c_m e0 + sqrt(1 - c_m^2) e_m'
    with its own direction e_m', so its similarity to EDGE_ROW is c_m and to another record
    c_m c_m' (exact ties stay exact: tied records are the same vector). EDGE_ROW's similarities:
    0.95 (EDGE_ABOVE), 0.8 + 3e-6 (EDGE_JUST_ABOVE), exactly 0.8 for the three EDGE_TIES (in
    three column chunks of 8 and on three devices of 4 rows), 0.8 - 2e-6 and 0.8 - 1e-4, and
    0.1 .. 0.6 for the rest, so its k-th value is 0.8 and its cap holds EDGE_TIES[0] only."""
    c = np.random.default_rng(11).uniform(0.1, 0.6, size=N)
    c[EDGE_ABOVE], c[EDGE_JUST_ABOVE], c[list(EDGE_TIES)] = 0.95, 0.8 + 3e-6, 0.8
    c[EDGE_JUST_BELOW_IN], c[EDGE_JUST_BELOW_OUT] = 0.8 - 2e-6, 0.8 - 1e-4
    guide = np.zeros((N, N))
    guide[EDGE_ROW, 0] = 1.0
    for m in range(N):
        if m != EDGE_ROW:
            own = m if m != 0 else EDGE_ROW  # e_0 is EDGE_ROW's; record 0 takes the free e_9
            guide[m, 0], guide[m, own] = c[m], np.sqrt(1.0 - c[m] ** 2)
    return guide.astype(np.float32)
