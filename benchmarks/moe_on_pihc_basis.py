"""PI-HC-MoE (K = 4) evaluated on the basis a PI-HC run trained (issue 14): do the experts' rows
pick a better member of the same span than the single solve's?

    OMP_NUM_THREADS=1 python benchmarks/run_seeds.py problems/configs/ds_cpu.toml --seeds 0 1 --methods pihc
    OMP_NUM_THREADS=1 python benchmarks/moe_on_pihc_basis.py
"""
import torch, sys
from femoe.train.config import load_config
from femoe.train.task import Task
from femoe.train.methods import build_method
from femoe.train.run import evaluate
torch.set_num_threads(1)
cfg = load_config('problems/configs/ds_cpu.toml'); task = Task(cfg)
for seed in (0, 1):
    st = torch.load(f'results/ds_cpu_s{seed}/pihc/checkpoint.pt', weights_only=False)
    m = build_method('moe', task); m.net.load_state_dict({k[4:]: v for k, v in st['model'].items() if k.startswith('net.')})
    r = evaluate(task, m, 4)
    print(f'seed {seed}: MoE (K=4) on the trained PI-HC basis: {100*r["rel_l2_mean"]:.2f} +- {100*r["rel_l2_std"]:.2f} %, best in span {100*r["best_in_span_mean"]:.2f} %, jump {r["interface_jump"]:.3e}', flush=True)
