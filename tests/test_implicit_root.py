"""The implicit-differentiation primitive (:func:`femoe.layers.implicit_root`): gradients of a
root from one adjoint solve, checked by gradcheck against finite differences, and equal whether
the problem gives its own vector-Jacobian product or leaves it to autograd."""

import pytest
import torch

from femoe.layers import ImplicitProblem, LeastSquaresRoot, NewtonRoot, implicit_root

F64 = torch.float64


class Cubic(ImplicitProblem):
    """x^3 + a x - c = 0 elementwise (a > 0: one real root), solved by Newton on the floats."""

    def __init__(self, own_vjp: bool = False):
        self.own_vjp = own_vjp
        self.solves = 0

    def solve(self, inputs):
        a, c = inputs
        self.solves += 1
        x = torch.zeros_like(c)
        for _ in range(60):
            x = x - (x**3 + a * x - c) / (3 * x**2 + a)
        return x

    def optimality(self, x, inputs):
        a, c = inputs
        return x**3 + a * x - c

    def adjoint(self, x, inputs, g, needs):
        a, _ = inputs
        return g / (3 * x**2 + a)  # dF/dx is diagonal (and symmetric)

    def vjp(self, x, inputs, v, needs):
        if not self.own_vjp:
            return None
        # dF/da = x, dF/dc = -1
        return [-(v * x) if needs[0] else None, v.clone() if needs[1] else None]


@pytest.mark.parametrize("own_vjp", [False, True])
def test_gradcheck_of_a_root(own_vjp):
    g = torch.Generator().manual_seed(0)
    a = (1.0 + torch.rand(2, 3, dtype=F64, generator=g)).requires_grad_(True)
    c = torch.randn(2, 3, dtype=F64, generator=g).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, c: implicit_root(Cubic(own_vjp), a, c), (a, c))


def test_the_gradient_is_the_closed_form_and_only_needed_inputs_get_one():
    a = torch.tensor([2.0, 3.0], dtype=F64, requires_grad=True)
    c = torch.tensor([1.0, -2.0], dtype=F64)
    x = implicit_root(Cubic(), a, c)
    (ga,) = torch.autograd.grad(x.sum(), a)
    torch.testing.assert_close(ga, -x.detach() / (3 * x.detach() ** 2 + a.detach()))  # dx/da = -x / F_x
    torch.testing.assert_close(x**3 + a * x - c, torch.zeros_like(c), atol=1e-12, rtol=0)


def test_the_instances_are_implicit_problems():
    assert issubclass(NewtonRoot, ImplicitProblem) and issubclass(LeastSquaresRoot, ImplicitProblem)


def test_a_problem_or_model_without_its_required_methods_cannot_be_made():
    from femoe.layers import ResidualModel

    class Half(ImplicitProblem):
        def solve(self, inputs):
            return inputs[0]

    class NoRows(ResidualModel):
        def residual(self, u, p):
            return u

    with pytest.raises(TypeError, match="abstract"):
        Half()
    with pytest.raises(TypeError, match="abstract"):
        NoRows()
