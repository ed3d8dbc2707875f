"""Training-step benchmark: images/s of the whole training step (loader, forward, backward, optimizer step) of the default
recipe and of the competition's `seed` recipe, for fp32 and bf16 autocast, channels-last on and off, torch.compile on and off,
1 and 2 threads, and the loader in the training process or in one worker beside it.

Each configuration runs in a fresh Python process (threads, OpenMP and compile state never leak from one to the next) on
posters8 when it sits beside the repository (the demo set otherwise): a fixed number of warm-up steps, then timed steps of
a shuffled, augmented training fold, until `--steps` steps or `--seconds` of timing, whichever comes first. It prints one
table: median images/s, peak memory of the process, and the speed-up over today's configuration of the same recipe (fp32,
channels-last, eager, 2 threads, no loader worker). Run it on a quiet machine.

    python bench/bench_train.py                      # everything (~20-40 min on 2 cores without native bf16)
    python bench/bench_train.py --recipes default --quick
"""
from __future__ import annotations
import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')
ROOT = Path(__file__).resolve().parents[1]
POSTERS8 = (ROOT / '..' / 'shared' / 'data' / 'posters8').resolve()
# The competition notebook's recipe (bench/benchmark.py's SEED): its network on 128x128 squares, batch 32.
RECIPES = {'default': {}, 'seed': dict(arch='seed', image_size=128, aspect=1.0, batch_size=32, optimizer='adam', lr=1e-4,
                                       weight_decay=1e-5, schedule='constant', warmup_epochs=0.0)}
TODAY = dict(dtype='fp32', channels_last=True, compile=False, threads=2, workers=0)


def one(setting: dict, data_dir: str, warmup: int, steps: int, seconds: float) -> dict:
    "Time `setting` in this process: the training step of its recipe on fold 1's training movies."
    import numpy as np
    import torch
    from movie_genre.data import load_split, make_loader
    from movie_genre.device import Runtime, compile_model
    from movie_genre.model import build_model
    from movie_genre.runs import load_or_make_folds
    from movie_genre.train import TrainConfig, fold_datasets, lr_lambda, make_optimizer, train_step
    cfg = TrainConfig.from_dict({**RECIPES[setting['recipe']], 'data_dir': data_dir, 'channels_last': setting['channels_last'],
                                 'amp': setting['dtype'] != 'fp32', 'amp_dtype': 'bf16' if setting['dtype'] == 'bf16' else 'auto',
                                 'threads': setting['threads'], 'device': 'cpu'})
    runtime = Runtime.of(cfg)
    data = load_split(cfg.data_dir, 'train', cfg.image_size, cfg.aspect)
    folds = load_or_make_folds(ROOT / '.cache' / 'bench_train' / Path(data_dir).name / 'folds.csv', data, cfg.folds, cfg.fold_seed)
    train_ds, _ = fold_datasets(cfg, data, folds)
    loader = make_loader(train_ds, cfg.batch_size, shuffle=True, num_workers=setting['workers'], drop_last=True)
    torch.manual_seed(0)
    model = runtime.prepare(build_model(cfg, len(data.genres), *data.title_vectors.shape[1:]))
    step_model = compile_model(model) if setting['compile'] else model
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, len(loader)))
    scaler = torch.amp.GradScaler('cpu', enabled=False)
    model.train()
    times, start, batches = [], time.perf_counter(), iter(loader)
    t0 = time.perf_counter()
    for i in range(warmup + steps):
        batch = runtime.batch_to_device(next(batches))  # the loader's time is part of the step
        train_step(step_model, batch, optimizer, scheduler, scaler, runtime, cfg)
        t1 = time.perf_counter()
        if i >= warmup: times.append(t1 - t0)
        if i == warmup - 1: start = t1
        t0 = t1
        if i >= warmup + 2 and t1 - start > seconds: break
    return dict(img_per_s=cfg.batch_size / statistics.median(times), steps=len(times),
                peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, runtime=runtime.describe())


def settings(recipes: list[str], quick: bool) -> list[dict]:
    "Every combination of the factors for each recipe (with `quick`: today's configuration and one change at a time)."
    factors = dict(dtype=['fp32', 'bf16'], channels_last=[True, False], compile=[False, True], threads=[2, 1])
    out = []
    for recipe in recipes:
        combos = [dict(zip(factors, values)) for values in itertools.product(*factors.values())]
        if quick: combos = [c for c in combos if sum(c[k] != TODAY[k] for k in factors) <= 1]
        out += [dict(recipe=recipe, **c, workers=0) for c in combos]
        out.append(dict(recipe=recipe, **TODAY | {'workers': 1}))  # the loader in a worker process, beside the model
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data-dir', default=str(POSTERS8) if POSTERS8.is_dir() else None,
                        help='posters8 when it is beside the repository; else the demo set is written to .cache/bench_train/demo')
    parser.add_argument('--recipes', default='default,seed')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--seconds', type=float, default=25.0, help='stop timing a configuration after this long')
    parser.add_argument('--quick', action='store_true', help="today's configuration and one change at a time, not every combination")
    parser.add_argument('--one', help=argparse.SUPPRESS)  # a JSON setting: time it in this process and print the result
    args = parser.parse_args()
    if args.data_dir is None:
        from movie_genre.demo import make_demo
        demo = ROOT / '.cache' / 'bench_train' / 'demo'
        if not (demo / 'train.csv').exists(): make_demo(demo, n_train=1200, n_test=8)
        args.data_dir = str(demo)
    if args.one:
        print(json.dumps(one(json.loads(args.one), args.data_dir, args.warmup, args.steps, args.seconds)))
        return
    rows = []
    for setting in settings(args.recipes.split(','), args.quick):
        command = [sys.executable, __file__, '--one', json.dumps(setting), '--data-dir', args.data_dir, '--warmup', str(args.warmup),
                   '--steps', str(args.steps), '--seconds', str(args.seconds)]
        started = time.time()
        r = subprocess.run(command, capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': str(setting['threads'])})
        result = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {'error': r.stderr.strip().splitlines()[-1]}
        rows.append({**setting, **result, 'wall_s': time.time() - started})
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))


def table(rows: list[dict]) -> str:
    "The results as a markdown table, with each row's speed-up over today's configuration of its recipe."
    today = {r['recipe']: r.get('img_per_s') for r in rows if all(r[k] == v for k, v in TODAY.items())}
    lines = ['| recipe | autocast | layout | compile | threads | loader | img/s (median) | x today | peak MB | steps timed |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        speed = r.get('img_per_s')
        ratio = f'{speed / today[r["recipe"]]:.2f}' if speed and today.get(r['recipe']) else ''
        lines.append(f"| {r['recipe']} | {r['dtype']} | {'channels-last' if r['channels_last'] else 'NCHW'} | "
                     f"{'on' if r['compile'] else 'off'} | {r['threads']} | {'1 worker' if r['workers'] else 'in process'} | "
                     f"{f'{speed:.0f}' if speed else r.get('error', '')} | {ratio} | {r.get('peak_mb', 0):.0f} | {r.get('steps', '')} |")
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
