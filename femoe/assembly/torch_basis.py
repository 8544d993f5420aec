"""Basis data precomputed once by scikit-fem, kept as torch tensors per device and dtype.

femoe evaluates a weak form from the *jets* of the basis functions at the quadrature points:
for every local basis function its values and gradients, component by component, flattened
into ``J`` numbers (``J = ncomp * (1 + dim)`` per field). A field's jet is then a gather plus a
contraction, and a form that is linear in its test function ``v`` is fully described by its
``J`` coefficients ``c_a`` (its value on the unit test jets).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from femoe.assembly.fields import Field


@dataclass(frozen=True)
class FieldLayout:
    """Component shapes of one field of a (possibly mixed) basis."""

    value_shape: tuple[int, ...]
    grad_shape: tuple[int, ...]
    offset: int  # first jet index of this field

    @property
    def n_value(self) -> int:
        return int(np.prod(self.value_shape, dtype=int))

    @property
    def n_grad(self) -> int:
        return int(np.prod(self.grad_shape, dtype=int))

    @property
    def size(self) -> int:
        return self.n_value + self.n_grad

    def split(self, jets: torch.Tensor, test_axis: bool = True) -> Field:
        """The Field of this layout out of a ``(J, *rest)`` jet tensor (views, differentiable).

        With ``test_axis`` a singleton axis is put after the component axes, where test
        functions carry their jet index, so that trial and test fields broadcast.
        """
        rest = jets.shape[1:]
        if test_axis:
            rest = (1, *rest)
        o = self.offset
        value = jets[o : o + self.n_value].reshape(*self.value_shape, *rest)
        grad = jets[o + self.n_value : o + self.size].reshape(*self.grad_shape, *rest)
        return Field(value, grad)


#: Largest ``phi_pair`` tensor (entries) kept per basis: elements x points x jets^2 x local DOFs^2
#: (4M entries, 32 MB in float64): scalar 1D P1 (2 points) up to 131k elements, scalar 2D P1
#: (3 points) up to 17k, P1 x P1 (omega, psi) with 6 points up to 539. Larger bases use two
#: smaller matmuls per Jacobian instead.
PAIR_MAX_ENTRIES = 1 << 22


def pair_tensor(t: dict[str, torch.Tensor]) -> torch.Tensor:
    """``phi_dx[a, i] phi[b, j]`` per element and point, shaped ``(e, (q, a, b), (i, j))``, from a
    basis' :meth:`TorchBasis.tensors`: with it the local Jacobian is one batched matmul over the
    elements (:func:`femoe.assembly.form.jacobian_pair`)."""
    J, n, E, Q = t["phi"].shape
    return torch.einsum("aieq,bjeq->eqabij", t["phi_dx"], t["phi"]).reshape(E, Q * J * J, n * n).contiguous()


def jet_tensors(t: dict[str, torch.Tensor], test: tuple[int, ...], trial: tuple[int, ...]) -> dict:
    """A basis' tensors (:meth:`TorchBasis.tensors`) restricted to the test jets ``test`` (the
    ``a`` axis of ``phi_dx``) and the trial jets ``trial`` (the ``b`` axis of ``phi``), for the
    local residual and Jacobian of a form that reads only those (:func:`femoe.assembly.form.
    coefficients`); ``t`` itself when they are every jet. Cached in ``t``."""
    J, n, E, Q = t["phi"].shape
    if len(test) == J and len(trial) == J:
        return t
    key = ("jets", test, trial)
    if key not in t:
        a = torch.as_tensor(test, dtype=torch.long, device=t["phi"].device)
        b = torch.as_tensor(trial, dtype=torch.long, device=t["phi"].device)
        sub = {"phi_dx": t["phi_dx"].index_select(0, a).contiguous(),
               "phi": t["phi"].index_select(0, b).contiguous(),
               "phi_dx_eqia": t["phi_dx_eqia"].index_select(3, a).contiguous(),
               "phi_e_qb_j": t["phi_e_qb_j"].reshape(E, Q, J, n).index_select(2, b).reshape(E, -1, n).contiguous()}
        if "phi_pair" in t:
            sub["phi_pair"] = (t["phi_pair"].reshape(E, Q, J, J, n * n).index_select(2, a).index_select(3, b)
                               .reshape(E, -1, n * n).contiguous())
        t[key] = sub
    return t[key]


class TorchBasis:
    """Torch view of a scikit-fem ``CellBasis`` or ``FacetBasis``.

    Parameters
    ----------
    basis
        Any scikit-fem basis whose element provides values and gradients (H1-type elements:
        Lagrange, vector, and composites of those).
    """

    def __init__(self, basis):
        self.basis = basis
        self.element_dofs = np.ascontiguousarray(basis.element_dofs, dtype=np.int64)
        self.n_local, self.n_cells = self.element_dofs.shape
        first = basis.basis[0]
        layouts, off = [], 0
        for comp in first:
            if comp.grad is None:
                raise TypeError(
                    f"element {type(basis.elem).__name__} provides no gradients; femoe supports "
                    "H1-type (Lagrange, vector, composite) elements"
                )
            lay = FieldLayout(tuple(comp.shape[:-2]), tuple(comp.grad.shape[:-2]), off)
            layouts.append(lay)
            off += lay.size
        self.layouts = layouts
        self.n_jets = off
        self.is_facet = hasattr(basis, "normals")
        #: mesh element of every cell of this basis (the adjacent element for facet bases)
        self.element_index = np.asarray(basis.tind if self.is_facet else np.arange(self.n_cells), dtype=np.int64)
        self._cache: dict[tuple, dict[str, torch.Tensor]] = {}

    @cached_property
    def _phi(self) -> np.ndarray:
        """Jets of all local basis functions: ``(J, n_local, n_cells, nqp)``."""
        nqp = self.basis.dx.shape[-1]
        phi = np.zeros((self.n_jets, self.n_local, self.n_cells, nqp))
        for i in range(self.n_local):
            for lay, comp in zip(self.layouts, self.basis.basis[i]):
                o = lay.offset
                phi[o : o + lay.n_value, i] = np.asarray(comp).reshape(lay.n_value, self.n_cells, nqp)
                phi[o + lay.n_value : o + lay.size, i] = np.asarray(comp.grad).reshape(
                    lay.n_grad, self.n_cells, nqp
                )
        return phi

    def tensors(self, device, dtype) -> dict[str, torch.Tensor]:
        """Precomputed tensors on ``device`` in ``dtype`` (cached)."""
        key = (str(torch.device(device)), dtype)
        if key not in self._cache:
            b = self.basis
            as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)  # noqa: E731
            dx = np.asarray(b.dx)
            t = {
                "phi": as_t(self._phi),
                "phi_dx": as_t(self._phi * dx[None, None]),
                "dx": as_t(dx),
                "x": as_t(np.asarray(b.global_coordinates())),
                "element_dofs": torch.as_tensor(self.element_dofs, device=device),
            }
            # layouts for the Jacobian's batched matmuls (see form.local_residual_and_jacobian)
            t["phi_dx_eqia"] = t["phi_dx"].permute(2, 3, 1, 0).contiguous()
            t["phi_e_qb_j"] = t["phi"].permute(2, 3, 0, 1).reshape(self.n_cells, -1, self.n_local).contiguous()
            J, n, E, Q = t["phi"].shape
            if E * Q * J * J * n * n <= PAIR_MAX_ENTRIES:
                # phi_dx[a, i] phi[b, j] per element and point, (e, (q, a, b), (i, j)): the local
                # Jacobian is then one batched matmul over elements (see local_residual_and_jacobian)
                t["phi_pair"] = pair_tensor(t)
            if self.is_facet:
                t["n"] = as_t(np.asarray(b.normals))
            h = np.asarray(b.mesh_parameters()) if hasattr(b, "mesh_parameters") else None
            if h is not None:
                t["h"] = as_t(h.reshape(h.shape[0], 1) if h.ndim == 1 else h)
            self._cache[key] = t
        return self._cache[key]

    def jets(self, u: torch.Tensor, weighted: bool = False) -> torch.Tensor:
        """Jets of the DOF vectors ``u`` (B, N) at the quadrature points: ``(J, B, nel, nqp)``;
        ``weighted``: times the quadrature weights (a test field whose form, summed over the
        points, is the residual's product with ``u``)."""
        t = self.tensors(u.device, u.dtype)
        u_loc = u[:, t["element_dofs"]]  # (B, n_local, nel)
        return torch.einsum("bie,jieq->jbeq", u_loc, t["phi_dx" if weighted else "phi"])

    def fields(self, jets: torch.Tensor) -> list[Field]:
        return [lay.split(jets) for lay in self.layouts]

    def unit_test_fields(self, device, dtype, test: tuple[int, ...] | None = None) -> list[Field]:
        """Test-function fields whose jet index ``a`` is the unit jet ``test[a]`` (``a`` when
        ``test`` is None: every jet), on a broadcast axis in front of (batch, elements, points):
        shapes ``(*comp, len(test), 1, 1, 1)``."""
        eye = torch.eye(self.n_jets, dtype=dtype, device=device)
        if test is not None:
            eye = eye[:, list(test)]
        eye = eye.reshape(self.n_jets, eye.shape[1], 1, 1, 1)
        return [lay.split(eye, test_axis=False) for lay in self.layouts]

    def scatter(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """Sum local vectors ``(B, n_local, nel)`` into global vectors ``(B, n)``."""
        t = self.tensors(local.device, local.dtype)
        B = local.shape[0]
        out = local.new_zeros(B, n)
        return out.index_add(1, t["element_dofs"].reshape(-1), local.reshape(B, -1))


class TorchBasisView(TorchBasis):
    """A subset of the cells of a :class:`TorchBasis`, with its own DOF numbering.

    ``cells`` selects cells of ``parent`` (repetitions allowed) and ``element_dofs``
    (``(n_local, len(cells))``) numbers their DOFs; the precomputed tensors are gathered from
    the parent's, so nothing is recomputed by scikit-fem.
    """

    def __init__(self, parent: TorchBasis, cells: np.ndarray, element_dofs: np.ndarray):
        self.parent = parent
        self.basis = parent.basis
        self.cells = np.asarray(cells, dtype=np.int64)
        self.element_dofs = np.ascontiguousarray(element_dofs, dtype=np.int64)
        self.n_local, self.n_cells = self.element_dofs.shape
        self.layouts = parent.layouts
        self.n_jets = parent.n_jets
        self.is_facet = parent.is_facet
        self.element_index = parent.element_index[self.cells]
        self._cache = {}

    def tensors(self, device, dtype) -> dict[str, torch.Tensor]:
        key = (str(torch.device(device)), dtype)
        if key not in self._cache:
            pt = self.parent.tensors(device, dtype)
            c = torch.as_tensor(self.cells, device=device)
            t = {
                "phi": pt["phi"][:, :, c],
                "phi_dx": pt["phi_dx"][:, :, c],
                "dx": pt["dx"][c],
                "x": pt["x"][:, c],
                "element_dofs": torch.as_tensor(self.element_dofs, device=device),
                "phi_dx_eqia": pt["phi_dx_eqia"][c],
                "phi_e_qb_j": pt["phi_e_qb_j"][c],
            }
            if "n" in pt:
                t["n"] = pt["n"][:, c]
            if "h" in pt:
                t["h"] = pt["h"][c]
            self._cache[key] = t
        return self._cache[key]
