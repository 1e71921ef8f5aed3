"""Start-up time of the `slimgraph` commands a new user runs first, next to `import torch` in the same run.

    python benchmarks/bench_cli_startup.py [--repeat 5] [--artifact out/model.sg]

Each command runs in a fresh process (`python -m slimgraph.cli ...`); the figure is the median wall time
of `--repeat` runs. `passes`/`ops` are timed with a warm listing cache (the usual case) and once cold (an
empty cache directory: the first run after an install or a source edit). Without --artifact, a tiny MLP
is compiled to a temporary artifact for `inspect`.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path


def wall(args, env, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, *args], env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--artifact", default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    env = {**os.environ, "SLIMGRAPH_CACHE_DIR": str(tmp / "cache")}
    artifact = args.artifact
    if artifact is None:
        (tmp / "mlp.py").write_text(textwrap.dedent("""
            import torch
            def get_model():
                return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU()).eval(), (torch.randn(2, 8),)
            """))
        artifact = tmp / "m.sg"
        subprocess.run([sys.executable, "-m", "slimgraph.cli", "compile", tmp / "mlp.py", "-o", artifact],
                       env=env, check=True, stdout=subprocess.DEVNULL)
    rows = [("python -c 'import torch' (reference)", wall(["-c", "import torch"], env, args.repeat)),
            ("python -c pass (interpreter alone)", wall(["-c", "pass"], env, args.repeat))]
    for cmd in (["--help"], ["inspect", str(artifact)], ["passes"], ["ops"]):
        rows.append((f"slimgraph {' '.join(cmd[:1])}", wall(["-m", "slimgraph.cli", *cmd], env, args.repeat)))
    for cmd in ("passes", "ops"):
        cold = {**env, "SLIMGRAPH_CACHE_DIR": str(tmp / f"cold-{cmd}")}
        rows.append((f"slimgraph {cmd} (cold listing cache)", wall(["-m", "slimgraph.cli", cmd], cold, 1)))
    print(f"median of {args.repeat} runs (cold: 1 run), {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    for name, t in rows:
        print(f"  {name:42} {t:6.2f} s")


if __name__ == "__main__":
    main()
