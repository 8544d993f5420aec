"""Row weights of basis mode and the best-in-span diagnostic (issue 14)."""

import numpy as np
import pytest
import torch

from tests.test_train import tiny


def test_boundary_row_weights_scale_facet_rows_like_dirichlet_rows():
    from femoe.train.rows import row_weights
    from femoe.problems import get_problem

    p = get_problem("diffusion_sorption_1d").build(n_cells=128, n_saved=3, substeps=8)
    mass, bnd = row_weights(p, "mass"), row_weights(p, "boundary", dirichlet_weight=10.0)
    right = int(np.argmax(p.doflocs[0]))
    h = 1.0 / 128
    assert mass[right] == pytest.approx(3 / h)  # 1 / M_ii: the outflow row's BC weighted 384x
    assert bnd[right] == pytest.approx(1 / (h / 3 + 1))  # boundary measure 1: O(1) weight
    interior = np.setdiff1d(np.arange(p.n), [right, *p.dirichlet_dofs])
    assert np.allclose(bnd[interior], mass[interior])
    assert bnd[p.dirichlet_dofs] == pytest.approx(10.0) and mass[p.dirichlet_dofs] == pytest.approx(1.0)


def test_best_in_span_is_a_lower_bound_and_exact_for_a_basis_holding_the_reference(tmp_path):
    from femoe.train.methods import build_method
    from femoe.train.task import Task

    cfg = tiny(tmp_path, methods=("pihc",))
    task = Task(cfg)
    m = build_method("pihc", task)
    inp, ref = task.test.inputs, task.test.solutions.double()
    with torch.no_grad():
        u, _ = m(inp)
    span, err = m.best_in_span(inp, ref), task.relative_l2(u, ref)
    assert torch.all(span <= err + 1e-12)
    # a basis that contains the reference (plus noise columns): best in span is the reference
    B = m.network_output(inp).detach()
    B = torch.cat([B[..., :-1], ref.unsqueeze(-1)], dim=-1)
    m.network_output = lambda inputs, levels=None: B
    assert float(m.best_in_span(inp, ref).max()) < 1e-10


@pytest.mark.parametrize("method", ["pihc", "moe"])
def test_unconverged_policy_reaches_the_layers_from_the_config(tmp_path, method):
    from femoe.errors import ConfigError
    from femoe.train.config import config_from_dict
    from femoe.train.methods import build_method
    from femoe.train.task import Task

    cfg = tiny(tmp_path, methods=(method,))
    cfg.solver.unconverged = "exclude"
    m = build_method(method, Task(cfg))
    assert m.layer.unconverged.value == "exclude"
    with pytest.raises(ConfigError, match="solver.unconverged"):
        config_from_dict({"solver": {"unconverged": "skip"}})
