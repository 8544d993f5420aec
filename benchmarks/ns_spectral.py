"""A small pseudo-spectral solver of 2D vorticity Navier-Stokes on the periodic unit square.

Independent check of :mod:`femoe.problems.navier_stokes_2d`: ``omega_t + u . grad omega = nu lap omega``,
``u = (psi_y, -psi_x)``, ``-lap psi = omega``; numpy FFTs on an ``N x N`` grid, 2/3-rule
dealiasing, classical RK4 in time. Used by ``tests/test_problems_navier_stokes.py`` (slow) and
``benchmarks/bench_generate.py``.
"""

from __future__ import annotations

import numpy as np


def spectral_solve(omega0: np.ndarray, nu: float, T: float, n_levels: int, substeps: int) -> np.ndarray:
    """March the grid vorticity ``omega0`` ``(N, N)`` (index ``[i, j]`` at ``x = i / N, y = j / N``)
    to ``T``; returns ``n_levels + 1`` saved levels ``(n_levels + 1, N, N)`` at ``t = k T / n_levels``."""
    N = omega0.shape[0]
    k = np.fft.fftfreq(N, d=1.0 / N)
    kr = np.fft.rfftfreq(N, d=1.0 / N)
    kx, ky = np.meshgrid(k, kr, indexing="ij")
    kx, ky = 2 * np.pi * kx, 2 * np.pi * ky
    k2 = kx**2 + ky**2
    inv_k2 = np.where(k2 > 0, 1.0 / np.where(k2 > 0, k2, 1.0), 0.0)
    kmax = N // 2
    dealias = (np.abs(np.meshgrid(k, kr, indexing="ij")[0]) < 2 * kmax / 3) & (
        np.abs(np.meshgrid(k, kr, indexing="ij")[1]) < 2 * kmax / 3)

    def rhs(wh: np.ndarray) -> np.ndarray:
        ph = wh * inv_k2
        u = np.fft.irfft2(1j * ky * ph, s=(N, N))  # psi_y
        v = np.fft.irfft2(-1j * kx * ph, s=(N, N))  # -psi_x
        wx = np.fft.irfft2(1j * kx * wh, s=(N, N))
        wy = np.fft.irfft2(1j * ky * wh, s=(N, N))
        adv = np.fft.rfft2(u * wx + v * wy)
        return -adv * dealias - nu * k2 * wh

    wh = np.fft.rfft2(omega0)
    wh[0, 0] = 0.0
    dt = T / n_levels / substeps
    out = [np.fft.irfft2(wh, s=(N, N))]
    for _ in range(n_levels):
        for _ in range(substeps):
            k1 = rhs(wh)
            k2_ = rhs(wh + 0.5 * dt * k1)
            k3 = rhs(wh + 0.5 * dt * k2_)
            k4 = rhs(wh + dt * k3)
            wh = wh + dt / 6.0 * (k1 + 2 * k2_ + 2 * k3 + k4)
        out.append(np.fft.irfft2(wh, s=(N, N)))
    return np.stack(out)


def compare_with_fem(seed: int = 0, N: int = 256, substeps: int = 16) -> dict:
    """Solve one initial condition with the FEM reference and the spectral solver; return the
    relative L2 differences (grid norm) per saved level, and energy/enstrophy of the FEM run."""
    import time

    import skfem as fe

    from femoe.problems.navier_stokes_2d import SPEC, VorticitySolver, energy_enstrophy, evaluate_field

    problem = SPEC.build()
    p = problem.config
    coeffs = SPEC.sample_coefficients(np.random.default_rng(seed), 1, problem)
    iw = problem.basis.split_indices()[0]
    omega0 = evaluate_field(coeffs, problem.doflocs[:, iw], p["length_scale"])[0]
    t0 = time.perf_counter()
    times, U = VorticitySolver(problem).run(omega0)
    t_fem = time.perf_counter() - t0

    g = np.arange(N) / N
    X, Y = np.meshgrid(g, g, indexing="ij")
    grid = np.stack([X.ravel(), Y.ravel()])
    w_grid0 = evaluate_field(coeffs, grid, p["length_scale"])[0].reshape(N, N)
    t0 = time.perf_counter()
    W = spectral_solve(w_grid0, p["nu"], p["T"], p["n_steps"], substeps)
    t_spec = time.perf_counter() - t0

    # FEM vorticity -> grid by P1 interpolation on the original (non-periodic) mesh
    mesh = problem.orig_mesh
    probes = fe.Basis(mesh, fe.ElementTriP1()).probes(grid)
    fem_grid = (probes @ U[:, iw][:, problem.orig2dof].T).T.reshape(-1, N, N)
    diff = np.linalg.norm((fem_grid - W).reshape(len(times), -1), axis=1)
    rel = diff / np.linalg.norm(W.reshape(len(times), -1), axis=1)
    rel_st = float(np.linalg.norm(fem_grid - W) / np.linalg.norm(W))
    E, Z = energy_enstrophy(problem, U)
    # spectral energy and enstrophy for the plot
    k = 2 * np.pi * np.fft.fftfreq(N, d=1.0 / N)
    K2 = k[:, None] ** 2 + k[None, :] ** 2
    Wh = np.fft.fft2(W) / N**2
    Es = 0.5 * np.sum(np.abs(Wh) ** 2 * np.where(K2 > 0, 1.0 / np.where(K2 > 0, K2, 1), 0), axis=(1, 2))
    Zs = 0.5 * np.mean(W**2, axis=(1, 2))
    return {"seed": seed, "N": N, "times": times.tolist(), "rel_l2_per_level": rel.tolist(),
            "rel_l2_final": float(rel[-1]), "rel_l2_space_time": rel_st, "fem_seconds": t_fem,
            "spectral_seconds": t_spec, "energy_fem": E.tolist(), "enstrophy_fem": Z.tolist(),
            "energy_spectral": Es.tolist(), "enstrophy_spectral": Zs.tolist(),
            "fem_info": problem.last_reference_info}
