"""TSV-M, Iso-C, Iso-CTS and WUDI on small tensors, each against its formula written out here
with numpy, and through `pmerge merge` on the quick zoo."""
import numpy as np
import pytest
import torch

from models_store.checkpoint import load_state_dict
from models_store.cli import main
from trainer.methods.iso import iso_c_matrix, iso_cts_matrix, subspace_sizes
from trainer.methods.linear_layers import is_linear, merge_layers
from trainer.methods.tsv_m import tsv_matrix
from trainer.methods.wudi import wudi_matrix


def deltas(t=3, m=12, n=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(m, n, generator=g, dtype=torch.float64) for _ in range(t)]


def nearest_orthonormal(x):
    p, _, qh = np.linalg.svd(x, full_matrices=False)
    return p @ qh


def test_linear_layers_get_the_matrix_and_the_rest_the_mean():
    assert is_linear("transformer.resblocks.0.attn.in_proj_weight", torch.zeros(6, 2))
    assert is_linear("proj", torch.zeros(4, 3))
    assert not is_linear("positional_embedding", torch.zeros(5, 4)) and not is_linear("ln_pre.weight", torch.zeros(4))
    assert not is_linear("conv1.weight", torch.zeros(4, 3, 2, 2))
    vectors = {t: {"w": torch.full((2, 2), float(i)), "ln.bias": torch.full((2,), float(i))}
               for i, t in enumerate("abc")}
    merged = merge_layers(vectors, lambda ds: torch.stack(ds).sum(0) * 10)
    assert torch.equal(merged["w"], torch.full((2, 2), 30.0)) and torch.equal(merged["ln.bias"], torch.ones(2))


def test_tsv_m_keeps_each_tasks_top_triplets_and_orthogonalises_them():
    ds = deltas()
    keep = int(9 / 3)
    svds = [np.linalg.svd(d.numpy(), full_matrices=False) for d in ds]
    u = np.concatenate([s[0][:, :keep] for s in svds], 1)
    s = np.concatenate([x[1][:keep] for x in svds])
    vh = np.concatenate([x[2][:keep] for x in svds], 0)
    expected = nearest_orthonormal(u) @ np.diag(s) @ nearest_orthonormal(vh)
    assert np.allclose(tsv_matrix(ds, 1 / 3).numpy(), expected, atol=1e-5)
    # one task, everything kept: the task's own delta
    assert np.allclose(tsv_matrix(ds[:1], 1.0).numpy(), ds[0].numpy(), atol=1e-5)


def test_iso_c_flattens_the_spectrum_of_the_sum():
    ds = deltas()
    u, s, vh = np.linalg.svd(sum(d.numpy() for d in ds), full_matrices=False)
    merged = iso_c_matrix(ds).numpy()
    assert np.allclose(merged, s.mean() * u @ vh, atol=1e-5)
    assert np.allclose(np.linalg.svd(merged, compute_uv=False), s.mean(), rtol=1e-5)


def test_iso_cts_common_subspace_plus_each_tasks_own():
    assert subspace_sizes(9, 3, 0.8) == (9 - 3 * round((9 - 7) / 3), round((9 - 7) / 3))
    ds = deltas()
    common, per_task = subspace_sizes(9, 3, 0.5)
    assert (common, per_task) == (3, 2)
    total = sum(d.numpy() for d in ds)
    u, s, vh = np.linalg.svd(total, full_matrices=False)
    uc = u[:, :common]
    us, ss, vhs = [uc], [s[:common]], [vh[:common]]
    for d in ds:
        ut, st, vht = np.linalg.svd(d.numpy() - uc @ uc.T @ d.numpy(), full_matrices=False)
        us.append(ut[:, :per_task])
        ss.append(st[:per_task])
        vhs.append(vht[:per_task])
    expected = np.concatenate(ss).mean() * nearest_orthonormal(np.concatenate(us, 1)) @ \
        nearest_orthonormal(np.concatenate(vhs, 0))
    assert np.allclose(iso_cts_matrix(ds, 0.5).numpy(), expected, atol=1e-5)
    # no task-specific part: Iso-C
    assert np.allclose(iso_cts_matrix(ds, 1.0).numpy(), iso_c_matrix(ds).numpy(), atol=1e-5)


def test_wudi_descends_to_the_least_interference_solution():
    """The objective is quadratic: its minimiser tau* solves tau* G = sum_i w_i tau_i G_i with
    G_i = tau_i^T tau_i, G = sum_i w_i G_i; Adam from the sum gets there."""
    ds = [d.float() for d in deltas(t=3, m=6, n=4)]
    w = [1 / float(d.square().sum()) for d in ds]
    grams = [d.T @ d for d in ds]
    target = sum(wi * d @ g for wi, d, g in zip(w, ds, grams)) @ torch.linalg.inv(sum(wi * g for wi, g in zip(w, grams)))
    assert torch.equal(wudi_matrix(ds, 0, 1e-5, torch.device("cpu")), sum(ds))  # no steps: the sum
    solved = wudi_matrix(ds, 3000, 1e-2, torch.device("cpu"))
    assert (solved - target).abs().max() < 1e-3 * target.abs().max()


@pytest.mark.parametrize("method,flags", [("tsv-m", []), ("iso-c", ["--scale", "0.5"]),
                                          ("iso-cts", ["--common-fraction", "0.5"]), ("wudi", ["--steps", "3"])])
def test_matrix_merges_through_the_cli(quick_zoo, tmp_path, method, flags):
    out = tmp_path / "m.safetensors"
    main(["merge", method, "--zoo", str(quick_zoo.root), "--out", str(out), "--device", "cpu"] + flags)
    merged, pretrained = load_state_dict(out), quick_zoo.pretrained()
    assert set(merged) == set(pretrained)
    vectors = [{k: v.float() - pretrained[k].float() for k, v in quick_zoo.finetuned(t).items()
                if v.is_floating_point()} for t in quick_zoo.tasks]
    scale = 0.5 if method == "iso-c" else 1.0
    bias = next(k for k in pretrained if k.endswith("ln_post.bias"))
    mean = sum(v[bias] for v in vectors) / len(vectors)
    assert torch.allclose(merged[bias].float(), pretrained[bias].float() + scale * mean, atol=1e-6)
    weight = next(k for k in pretrained if k.endswith("attn.in_proj_weight"))
    assert not torch.allclose(merged[weight].float(), pretrained[weight].float() + scale * sum(
        v[weight] for v in vectors) / len(vectors), atol=1e-6)  # the matrix treatment, not the mean


@pytest.mark.parametrize("method", ["tsv-m", "iso-c", "iso-cts"])
def test_a_matrix_merge_streams_the_zoo_and_equals_the_merge_of_kept_vectors(quick_zoo, method):
    from trainer.methods import MergeContext, get_method
    from trainer.pool import ModelPool
    streamed_pool, kept_pool = ModelPool(quick_zoo), ModelPool(quick_zoo)
    kept_pool.task_vectors  # noqa: B018 (computed and kept, as a learner that needs them whole does)
    merge = get_method(method)
    streamed = merge(MergeContext(pool=streamed_pool, progress=False))
    kept = merge(MergeContext(pool=kept_pool, progress=False))
    assert "task_vectors" not in streamed_pool.__dict__  # K towers never held at once
    assert all(torch.allclose(streamed[k], kept[k], atol=1e-6) for k in kept)
