"""The disjoint union of element patches of a problem (:class:`PatchUnion`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from femoe.assembly.torch_basis import TorchBasisView
from femoe.errors import ProblemError
from femoe.problem._dirichlet import DirichletRows
from femoe.problem._form import FacetTerm, WeakForm
from femoe.problem._parameters import PatchParameters
from femoe.problem._pattern import SparsityPattern

if TYPE_CHECKING:
    from femoe.problem._problem import Problem


class PatchUnion(WeakForm):
    """The disjoint union of element patches of a parent :class:`Problem`.

    Patch ``k`` consists of the elements ``element_sets[k]`` and has its own copy of their DOFs
    (``local_dofs[k]``, global numbers, sorted); in the union they are numbered
    ``offsets[k] .. offsets[k+1]``. The union is itself a :class:`WeakForm`: its residual,
    evaluated once, gives each patch's residual for its own field, at the cost of one evaluation
    on the union of the patches. A row of the union equals the parent's row wherever the patch
    contains the whole element star of that DOF (for an expert: its owned rows), which
    :attr:`complete_rows` marks. Nodal parameters are given on the parent's DOFs and gathered;
    element parameters on the parent's elements.

    Composition: the union holds its :attr:`parent` and builds its own pieces for the union's
    DOFs: a torch basis and facet terms that view the parent's cells and facets, the parent's
    scikit-fem matrix block by block, its own :class:`SparsityPattern` and
    :class:`DirichletRows`, and :class:`PatchParameters` (the parent's kinds, nodal values
    gathered). Its Dirichlet values are the parent's, gathered (:meth:`dirichlet_values`). What
    only the parent can answer, because it holds the parent's numbering (the field table, the
    Dirichlet entries) or makes new unions, is listed in :attr:`_PARENT_ONLY` and
    :attr:`_PARENT_ONLY_MEMBERS` and refused with a pointer to ``union.parent``.
    """

    def __init__(self, parent: "Problem", element_sets: Sequence[np.ndarray]):
        self.parent = parent
        ed = parent._tb.element_dofs
        self.element_sets = [np.unique(np.asarray(e, dtype=np.int64)) for e in element_sets]
        self.local_dofs = [np.unique(ed[:, e]) for e in self.element_sets]
        sizes = [d.size for d in self.local_dofs]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        n = int(self.offsets[-1])
        self.union_to_global = np.concatenate(self.local_dofs) if self.local_dofs else np.zeros(0, np.int64)
        self.patch_of_dof = np.repeat(np.arange(len(sizes)), sizes)
        parameters = PatchParameters(parent._parameters, self.union_to_global, n)

        def renumber(k, glob):
            return np.searchsorted(self.local_dofs[k], glob) + self.offsets[k]

        cells = np.concatenate(self.element_sets)
        union_ed = np.concatenate([renumber(k, ed[:, e]) for k, e in enumerate(self.element_sets)], axis=1)
        tb = TorchBasisView(parent._tb, cells, union_ed)
        facets = []
        for ft in parent._facets:
            f_cells, f_ed = [], []
            for k, e in enumerate(self.element_sets):
                sel = np.nonzero(np.isin(ft.tb.element_index, e))[0]
                f_cells.append(sel)
                f_ed.append(renumber(k, ft.tb.element_dofs[:, sel]))
            view = TorchBasisView(ft.tb, np.concatenate(f_cells), np.concatenate(f_ed, axis=1))
            facets.append(FacetTerm(ft.tag, ft.integrand, view))
        A = None
        if parent._A is not None:
            A_csr = parent._A.tocsr()
            A = sp.block_diag([A_csr[d][:, d] for d in self.local_dofs], format="coo")
        b = None if parent._b is None else parent._b[self.union_to_global]
        sparsity = SparsityPattern(n, tb.element_dofs, [ft.tb.element_dofs for ft in facets], A)
        is_dir_parent = np.zeros(parent.n, dtype=bool)
        is_dir_parent[parent.dirichlet_dofs] = True
        rows = DirichletRows(is_dir_parent[self.union_to_global], sparsity)
        super().__init__(name=parent.name, basis=parent.basis, n=n, tb=tb, facets=facets, A=A, b=b,
                         residual=parent.residual_integrand, storage=parent.storage_integrand, scheme=parent.scheme,
                         sparsity=sparsity, dirichlet_rows=rows, parameters=parameters)
        # position of each union Dirichlet DOF among the parent's Dirichlet DOFs
        self._dir_in_parent = np.searchsorted(parent.dirichlet_dofs, self.union_to_global[self.dirichlet_dofs])
        # rows whose whole element star lies in the patch: equal to the parent's rows
        star = np.zeros(parent.n, dtype=np.int64)
        np.add.at(star, ed.reshape(-1), 1)
        in_patch = np.zeros(self.n, dtype=np.int64)
        np.add.at(in_patch, union_ed.reshape(-1), 1)
        self.complete_rows = in_patch == star[self.union_to_global]

    # What a Problem has and its union does not: the parent's field table and Dirichlet entries
    # hold the parent's DOF numbers, and the members that read them (or make new unions) answer
    # for the parent. They raise, pointing to union.parent, instead of answering wrongly
    # (tests/test_patch_union.py checks that every attribute and public member of a Problem is
    # either the union's own, shared through WeakForm, or listed here).
    _PARENT_ONLY = ("_fields", "_dirichlet")
    _PARENT_ONLY_MEMBERS = ("fields", "components", "field_dofs", "field_basis", "split", "null_space_probes",
                            "dirichlet_dofs_of", "restrict")

    def __getattr__(self, name):
        if name in PatchUnion._PARENT_ONLY or name in PatchUnion._PARENT_ONLY_MEMBERS:
            raise ProblemError(f"{name.lstrip('_')!r} is defined on the parent problem, whose DOF numbers it holds, not "
                               "on its patch union; use union.parent (and union.union_to_global for the numbering)")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def n_patches(self) -> int:
        return len(self.element_sets)

    @property
    def doflocs(self) -> np.ndarray:
        """The parent's DOF coordinates of every union DOF ``(dim, n)``."""
        return self.parent.doflocs[:, self.union_to_global]

    def gather(self, u: torch.Tensor) -> torch.Tensor:
        """Parent DOF vectors ``(..., n_parent)`` to union vectors ``(..., n)`` (each patch's copy)."""
        return u.index_select(-1, torch.as_tensor(self.union_to_global, device=u.device))

    def dirichlet_values(self, params=None, *, t=None, batch: int = 1, device="cpu", dtype=torch.float64):
        """The parent's Dirichlet values at the union's Dirichlet DOFs ``(B, n_dirichlet)``."""
        g = self.parent.dirichlet_values(params, t=t, batch=batch, device=device, dtype=dtype)
        return g[:, torch.as_tensor(self._dir_in_parent, device=g.device)]

    @property
    def dirichlet_depends_on_time(self) -> bool:
        return self.parent.dirichlet_depends_on_time
